"""The HTTP API on a loopback port: every endpoint, bad inputs as 4xx, batching of concurrent questions, and
(marked slow, skipped without Chromium) the web page driven in headless Chromium."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from cora.pipeline import Pipeline, PipelineConfig
from cora.server import BackgroundServer, ServeConfig, create_app, snippet

from .conftest import make_tiny_reader


@pytest.fixture(scope="module")
def pipeline(datastore, tiny_encoder, tiny_encoder_dir, tmp_path_factory):
    from cora.index import DenseIndex, build_index
    from cora.retriever import Retriever

    tmp = tmp_path_factory.mktemp("serve")
    build_index(datastore, tiny_encoder, tmp / "index", str(tiny_encoder_dir), factory="Flat", show_progress=False)
    reader = make_tiny_reader(tiny_encoder_dir)
    return Pipeline(Retriever(tiny_encoder, DenseIndex.load(tmp / "index"), datastore), reader,
                    PipelineConfig(str(tmp / "index"), "tiny", k=3, max_k=10))


@pytest.fixture(scope="module")
def server(pipeline):
    config = ServeConfig(max_question_chars=200, max_k=5, max_body_bytes=2048, batch_window_ms=50, max_batch=8)
    with BackgroundServer(create_app(pipeline, config)) as url:
        yield url


def call(url: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict | str]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method="POST" if data is not None else "GET",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            status, text = res.status, res.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def test_answer_matches_the_pipeline_and_cites_evidence(server, pipeline):
    status, body = call(server, "/answer", {"question": "der mond umkreist die erde", "lang": "de"})
    assert status == 200
    direct = pipeline.answer("der mond umkreist die erde", lang="de")
    assert (body["answer"], body["lang"], body["projected"]) == (direct.text, "de", direct.projected)
    assert body["score"] == pytest.approx(direct.score, abs=1e-5)
    ev = body["evidence"][0]
    assert ev["id"] == direct.evidence[0].passage_id and ev["lang"] == direct.evidence[0].lang
    assert ev["snippet"][ev["start"] : ev["end"]].strip() == direct.text


def test_retrieve_health_info_page_and_schema(server, pipeline, datastore):
    status, body = call(server, "/retrieve", {"question": "tee getränk", "k": 2})
    hits = pipeline.retriever.search("tee getränk", k=2)
    assert status == 200 and [h["id"] for h in body["hits"]] == [h.passage_id for h in hits]
    assert [h["rank"] for h in body["hits"]] == [1, 2]
    assert call(server, "/health")[1]["status"] == "ok"
    status, info = call(server, "/info")
    assert status == 200 and info["datastore"] == {"passages": len(datastore), "languages": datastore.languages}
    assert info["limits"]["max_k"] == 5 and info["reader"]["backend"] == "extractive"
    # The index's own encoder encodes the questions (no query tower in this pipeline): /info names it.
    assert info["query_encoder"] == {"name": pipeline.retriever.index.config.encoder, "adapter": None, "scope": None}
    status, page = call(server, "/")
    assert status == 200 and 'id="question"' in page and 'name="viewport"' in page
    status, schema = call(server, "/openapi.json")
    assert status == 200 and {"/answer", "/retrieve", "/health", "/info"} <= set(schema["paths"])


@pytest.mark.parametrize("body, field", [
    ({"question": ""}, "question"),
    ({"question": "   "}, "question"),
    ({"question": 42}, "question"),
    ({}, "question"),
    ({"question": "x" * 201}, "question"),
    ({"question": "tee", "lang": "klingon"}, "lang"),
    ({"question": "tee", "k": 0}, "k"),
    ({"question": "tee", "k": 6}, "k"),
    ({"question": "tee", "k": "3"}, "k"),
    ({"question": "tee", "extra": 1}, "extra"),
])
def test_bad_inputs_are_4xx_with_the_field_named(server, body, field):
    for path in ("/answer", "/retrieve"):
        status, detail = call(server, path, body)
        assert status == 422, (path, body, detail)
        assert any(e["field"] == field for e in detail["errors"]), detail


def test_malformed_and_oversized_bodies(server):
    status, detail = call(server, "/answer", raw=b"{not json")
    assert status == 422 and [e["field"] for e in detail["errors"]] == ["body"]  # not the byte offset, "0"
    assert detail["detail"].startswith("body: not valid JSON (") and '{"question": "..."}' in detail["detail"]
    status, detail = call(server, "/answer", raw=b'["a list"]')
    assert status == 422 and [e["field"] for e in detail["errors"]] == [""]
    status, detail = call(server, "/answer", raw=json.dumps({"question": "x" * 5000}).encode())
    assert status == 413 and "2048 bytes" in detail["detail"]
    status, _ = call(server, "/nowhere")
    assert status == 404


def test_concurrent_questions_are_batched_and_each_gets_its_own_answer(server, pipeline):
    questions = ["der mond umkreist die erde", "tee getränk blätter", "wohin fließt der nil", "mount everest"]
    before = call(server, "/info")[1]["batching"]
    results: dict[str, dict] = {}

    def ask(q):
        results[q] = call(server, "/answer", {"question": q, "lang": "de"})[1]

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = call(server, "/info")[1]["batching"]
    assert after["questions"] - before["questions"] == 4
    assert after["batches"] - before["batches"] < 4  # at least two questions shared a model call
    for q in questions:
        assert results[q]["answer"] == pipeline.answer(q, lang="de").text


def test_snippet_keeps_the_span_inside_the_window():
    text = "a" * 500 + "ANSWER" + "b" * 500
    s, start, end = snippet(text, 500, 506, 100)
    assert s[start:end] == "ANSWER" and len(s) <= 102
    assert snippet("short", 0, 5, 100) == ("short", 0, 5)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Chromium and ChromeDriver (Debian: apt-get install chromium chromium-driver)")
def test_web_page_answers_in_headless_chromium(server, pipeline):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=390,844"):  # a phone-sized screen
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(server + "/")
        driver.find_element(By.ID, "question").send_keys("der mond umkreist die erde")
        driver.find_element(By.ID, "lang").send_keys("de")
        driver.find_element(By.ID, "ask").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "answer").text.strip())
        expected = pipeline.answer("der mond umkreist die erde", lang="de", k=5)
        assert driver.find_element(By.ID, "answer").text == (expected.text or "(no answer)")
        cards = driver.find_elements(By.CSS_SELECTOR, "#evidence .evidence")
        assert len(cards) == len(expected.evidence) >= 1
        assert cards[0].find_element(By.CSS_SELECTOR, ".badge").text.lower() == expected.evidence[0].lang
        # Fits the phone-sized viewport: no horizontal scrolling, the question box inside it.
        viewport = driver.execute_script("return document.documentElement.clientWidth")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= viewport
        assert driver.find_element(By.ID, "question").size["width"] <= viewport
        # A user mistake shows a message, not a broken page.
        driver.find_element(By.ID, "lang").send_keys("xx-invalid-code")
        driver.find_element(By.ID, "ask").click()
        WebDriverWait(driver, 30).until(lambda d: "Error" in d.find_element(By.ID, "status").text)
    finally:
        driver.quit()
