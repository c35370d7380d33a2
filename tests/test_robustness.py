"""Bad input, kills and overload: nothing is lost, nothing is silently wrong, and every user mistake is one line.

Each test (or each row of a parametrised table) is also a row of ``docs/behaviour.md``: the table there is
generated from the cases below (``python -m tests.test_robustness`` rewrites it), and
``test_the_docs_table_is_generated_from_these_cases`` keeps the two in step.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cora.cli import main
from cora.errors import CoraError

from .conftest import CORPUS, make_tiny_reader

DOC = Path(__file__).resolve().parents[1] / "docs" / "behaviour.md"
ROWS: list[tuple[str, str, str, str]] = []  # (area, input, behaviour, test): the docs table


def case(area: str, given: str, behaviour: str):
    """Record a test as a row of the docs table."""
    def deco(fn):
        ROWS.append((area, given, behaviour, fn.__name__))
        return fn
    return deco


def run_cli(argv: list, capsys) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line(code: int, err: list[str], message: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("cora: error: "), err
    assert message in err[0], err


def write_corpus(path: Path) -> Path:
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in CORPUS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def index_dir(datastore, tiny_encoder, tiny_encoder_dir, tmp_path_factory):
    from cora.index import build_index

    out = tmp_path_factory.mktemp("robust") / "index"
    build_index(datastore, tiny_encoder, out, str(tiny_encoder_dir), factory="Flat", show_progress=False)
    return out


# ------------------------------------------------------------------------------------------------ data loss
@case("data loss", "`datastore build p/passages.jsonl --out p --overwrite`, p also holding notes.md",
      "refused (`--out p holds the input`); p keeps every file")
def test_overwrite_never_deletes_a_folder_holding_the_source(tmp_path, capsys):
    p = tmp_path / "p"
    p.mkdir()
    src = write_corpus(p / "passages.jsonl")
    (p / "notes.md").write_text("notes")
    code, err = run_cli(["datastore", "build", src, "--out", p, "--overwrite"], capsys)
    assert_one_line(code, err, "holds the input")
    assert sorted(x.name for x in p.iterdir()) == ["notes.md", "passages.jsonl"]


@case("data loss", "`datastore build --out DIR --overwrite`, DIR a folder that is not a datastore",
      "refused (`holds files that are not a cora datastore`); DIR untouched")
def test_overwrite_replaces_only_a_datastore(corpus_file, tmp_path, capsys):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    code, err = run_cli(["datastore", "build", corpus_file, "--out", other, "--overwrite"], capsys)
    assert_one_line(code, err, "not a cora datastore")
    assert [x.name for x in other.iterdir()] == ["cat.jpg"]
    # A datastore is replaced with --overwrite, and only then.
    ds = tmp_path / "ds"
    assert run_cli(["datastore", "build", corpus_file, "--out", ds], capsys)[0] == 0
    code, err = run_cli(["datastore", "build", corpus_file, "--out", ds], capsys)
    assert_one_line(code, err, "already exists; pass --overwrite")
    capsys.readouterr()
    assert main(["datastore", "build", str(corpus_file), "--out", str(ds), "--overwrite"]) == 0


@case("data loss", "`cora demo --out DIR` where DIR already holds a datastore",
      "refused (`already exists; pass --overwrite`); the default folder ($CORA_HOME/demo) is rebuilt on every run")
def test_demo_does_not_replace_an_existing_out_without_asking(tmp_path, capsys):
    from cora.commands.demo import SAMPLE

    out = tmp_path / "mine"
    (out / "datastore").mkdir(parents=True)
    (out / "datastore" / "datastore.json").write_text("{}")
    (out / "datastore" / "passages.arrow").write_bytes(b"mine")
    code, err = run_cli(["demo", "--out", out, "--data", SAMPLE, "--encoder", tmp_path / "no-encoder"], capsys)
    assert_one_line(code, err, "already exists; pass --overwrite")
    assert (out / "datastore" / "passages.arrow").read_bytes() == b"mine"


TSV_ROWS = [f"{i}\tText of passage {i}\tTitle {i}" for i in range(20)]


@case("data loss", "w100 TSV (20 rows) whose row 4 text starts with an unclosed `\"`",
      "20 passages, the quote kept as text (one record per line: a quote never swallows rows)")
def test_tsv_unclosed_quote_swallows_no_rows(tmp_path):
    from cora.datastore import read_w100_tsv

    rows = list(TSV_ROWS)
    rows[4] = '4\t"Unclosed quote at the start\tTitle 4'
    path = tmp_path / "w.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    passages = [p for _, p in read_w100_tsv(path, lang="en")]
    assert len(passages) == 20
    assert passages[4].text == '"Unclosed quote at the start' and passages[5].id == "5"


@case("data loss", "w100 TSV text `\"Quoted\" word`; DPR's csv-quoted `\"a \"\"b\"\" c\"`",
      "`\"Quoted\" word` kept as is; a DPR-quoted field unquoted to `a \"b\" c`")
def test_tsv_quotes_are_kept_unless_the_field_is_csv_quoted(tmp_path):
    from cora.datastore import read_w100_tsv

    path = tmp_path / "w.tsv"
    path.write_text('id\ttext\ttitle\n1\t"Quoted" word\tT\n2\t"a ""b"" c"\tT\n3\t"tab\tinside"\tT\n',
                    encoding="utf-8")
    assert [p.text for _, p in read_w100_tsv(path, lang="en")] == ['"Quoted" word', 'a "b" c', "tab\tinside"]


@case("data loss", "`index build --out I` where I holds a finished index",
      "refused (`already exists; pass --overwrite`); a folder of unfinished shards is resumed")
def test_index_build_does_not_replace_an_index_silently(datastore, index_dir, tiny_encoder_dir, tmp_path, capsys):
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    before = (copy / "index.faiss").read_bytes()
    code, err = run_cli(["index", "build", "--datastore", datastore.path, "--encoder", tiny_encoder_dir, "--out",
                         copy, "--factory", "Flat"], capsys)
    assert_one_line(code, err, "already exists; pass --overwrite")
    assert (copy / "index.faiss").read_bytes() == before
    code, err = run_cli(["index", "build", "--datastore", datastore.path, "--out", tmp_path], capsys)
    assert_one_line(code, err, "not a cora index")  # tmp_path holds the copy: not an index folder


@case("data loss", "`retrieve --out Q --questions Q` (output = input)",
      "refused (`is the input`) even with --overwrite; Q intact")
def test_retrieve_out_equal_to_questions_is_refused(index_dir, tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "1", "question": "der mond"}\n', encoding="utf-8")
    code, err = run_cli(["retrieve", "--index", index_dir, "--questions", q, "--out", q, "--overwrite"], capsys)
    assert_one_line(code, err, "is the input")
    assert q.read_text(encoding="utf-8") == '{"id": "1", "question": "der mond"}\n'


@case("data loss", "`retrieve --out H`, `answer --out P`, `pipeline create --out D` where H, P, D/pipeline.json "
      "exist", "refused (`already exists; pass --overwrite`); replaced with --overwrite")
def test_commands_that_write_refuse_an_existing_output(index_dir, tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "1", "question": "der mond", "lang": "de"}\n', encoding="utf-8")
    hits = tmp_path / "hits.jsonl"
    hits.write_text("keep me")
    code, err = run_cli(["retrieve", "--index", index_dir, "--questions", q, "--out", hits], capsys)
    assert_one_line(code, err, "already exists; pass --overwrite")
    assert hits.read_text() == "keep me"
    assert run_cli(["retrieve", "--index", index_dir, "--questions", q, "--out", hits, "--overwrite",
                    "--device", "cpu"], capsys)[0] == 0
    assert json.loads(hits.read_text())["id"] == "1"
    preds = tmp_path / "preds.json"
    preds.write_text("keep me")
    code, err = run_cli(["answer", "--pipeline", tmp_path, "--questions", q, "--out", preds], capsys)
    assert_one_line(code, err, "already exists; pass --overwrite")
    code, err = run_cli(["answer", "--pipeline", tmp_path, "--questions", q, "--out", q, "--overwrite"], capsys)
    assert_one_line(code, err, "is the input")
    pipe = tmp_path / "pipe"
    assert run_cli(["pipeline", "create", "--index", index_dir, "--out", pipe], capsys)[0] == 0
    code, err = run_cli(["pipeline", "create", "--index", index_dir, "--out", pipe], capsys)
    assert_one_line(code, err, "already exists; pass --overwrite")
    assert run_cli(["pipeline", "create", "--index", index_dir, "--out", pipe, "--overwrite", "--k", "3"],
                   capsys)[0] == 0
    assert json.loads((pipe / "pipeline.json").read_text())["k"] == 3


@case("data loss", "a build killed mid-way left `.DIR.tmp-PID-*` / `.index.faiss.tmp-PID-*` behind",
      "the next build of DIR removes the leftovers of dead processes")
def test_leftovers_of_killed_builds_are_removed(corpus_file, tmp_path):
    from cora.datastore import Datastore, read_jsonl

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f".ds.tmp-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "passages.arrow").write_bytes(b"half")
    alive = tmp_path / f".ds.tmp-{os.getppid()}-xyz789"  # a running process's build is left alone
    alive.mkdir()
    Datastore.build(read_jsonl(corpus_file), tmp_path / "ds")
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds.")) == [alive.name]


# ---------------------------------------------------------------------------------------- silently wrong
@case("silently wrong", "index.faiss with bytes flipped inside its vectors (same size)",
      "refused on load (`corrupt or truncated: its size or SHA-256 differs`)")
def test_flipped_bytes_in_index_faiss_are_refused(index_dir, tmp_path):
    from cora.index import DenseIndex

    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    data = bytearray((copy / "index.faiss").read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    (copy / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(CoraError, match="corrupt or truncated"):
        DenseIndex.load(copy)
    assert DenseIndex.load(index_dir).config.faiss_sha256  # the untouched one loads and records its checksum


@case("silently wrong", "an encode interrupted without `--int8`, resumed with `--int8`",
      "the shard is re-encoded from the start (int8 recorded in the shard state); index.json records `int8`")
def test_resume_after_switching_int8_does_not_mix_rows(datastore, tiny_encoder_dir, tmp_path):
    import numpy as np

    from cora.encoder import Encoder
    from cora.index import DenseIndex, build_index, encode_shard

    fp32 = Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu")
    out = tmp_path / "index"
    encode_shard(datastore, fp32, out, chunk=4, show_progress=False)
    state = out / "shards" / "emb-00000-of-00001.json"
    meta = json.loads(state.read_text())
    meta["done"] = 4  # as if killed after the first chunk
    state.write_text(json.dumps(meta))
    int8 = Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu").quantize_int8()
    index = build_index(datastore, int8, out, str(tiny_encoder_dir), factory="Flat", show_progress=False)
    fresh = build_index(datastore, int8, tmp_path / "fresh", str(tiny_encoder_dir), factory="Flat",
                        show_progress=False)
    np.testing.assert_array_equal(index.index.reconstruct_n(0, len(datastore)),
                                  fresh.index.reconstruct_n(0, len(datastore)))
    assert DenseIndex.load(out).config.int8 is True
    assert DenseIndex.load(tmp_path / "fresh").config.int8 is True


TSV_COLUMN_CASES = [  # (given, file content, one-line error)
    ("no header and 5 columns", "1\ttext\ttitle\ten\textra\n", "w.tsv:1: 5 tab-separated columns; without a header"),
    ("a row with more columns than the header", "id\ttext\ttitle\n1\ttext\ttitle\tspill\n",
     "w.tsv:2: 4 tab-separated columns where the file has 3"),
    ("a row with fewer columns than the header", "id\ttext\ttitle\tlang\n1\ttext\ttitle\n",
     "w.tsv:2: 3 tab-separated columns where the file has 4"),
    ("a header naming an unknown column", "id\ttext\ttitle\tsource\n1\ttext\ttitle\tx\n", "w.tsv:1: header"),
]
ROWS.extend(("silently wrong", f"w100 TSV with {given}", f"one-line error: `{message}`",
             "test_tsv_column_count_is_checked") for given, _, message in TSV_COLUMN_CASES)


@pytest.mark.parametrize("given, content, message", TSV_COLUMN_CASES, ids=[c[0] for c in TSV_COLUMN_CASES])
def test_tsv_column_count_is_checked(tmp_path, given, content, message):
    from cora.datastore import read_w100_tsv

    path = tmp_path / "w.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CoraError, match=message):
        list(read_w100_tsv(path, lang="en"))


NO_LETTERS = ["😀🎉", "?!…", "\u200b\u200d\ufe0f", "🤔 ?"]
SHOWN = ", ".join(f"`{q.encode('ascii', 'backslashreplace').decode() if not q.isprintable() else q}`"
                  for q in NO_LETTERS)


@case("silently wrong", f"a question of only emoji, punctuation or zero-width characters ({SHOWN})",
      "refused: CoraError from `Pipeline.answer` and `Retriever.search`, a file:line:field error from a questions "
      "file")
def test_questions_without_letters_are_refused(index_dir, pipeline, tmp_path):
    from cora.questions import check_question, read_questions
    from cora.retriever import Retriever

    retriever = Retriever.from_pretrained(index_dir, device="cpu")
    for q in NO_LETTERS:
        assert "without letters or digits" in check_question(q)
        with pytest.raises(CoraError, match="without letters or digits"):
            retriever.search(q, k=2)
        with pytest.raises(CoraError, match="without letters or digits"):
            pipeline.answer(q)
    for fine in ("mond", "2 + 2", "東京", "ไทย"):
        assert check_question(fine) == ""
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "1", "question": "der mond"}\n{"id": "2", "question": "😀🎉"}\n', encoding="utf-8")
    with pytest.raises(CoraError, match="q.jsonl:2: field 'question' question without letters"):
        read_questions(path)


# --------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def pipeline(datastore, tiny_encoder, index_dir):
    from cora.index import DenseIndex
    from cora.pipeline import Pipeline, PipelineConfig
    from cora.retriever import Retriever

    reader = make_tiny_reader(tiny_encoder.config.backbone)
    retriever = Retriever(tiny_encoder, DenseIndex.load(index_dir), datastore, hybrid=True)
    return Pipeline(retriever, reader, PipelineConfig(str(index_dir), "tiny", k=3, max_k=10))


def request(url: str, path: str, body=None, raw: bytes | None = None, headers=None, chunked=False):
    """(status, JSON or text, headers) of one request; ``chunked`` sends the body without a Content-Length."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if chunked:
        import http.client

        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", path, body=iter([data[i:i + 1000] for i in range(0, len(data), 1000)]),
                     headers={"content-type": "application/json", **(headers or {})}, encode_chunked=True)
        res = conn.getresponse()
        status, text, hdrs = res.status, res.read().decode(), dict(res.headers)
        conn.close()
    else:
        req = urllib.request.Request(url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"content-type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                status, text, hdrs = res.status, res.read().decode(), dict(res.headers)
        except urllib.error.HTTPError as err:
            status, text, hdrs = err.code, err.read().decode(), dict(err.headers)
    try:
        return status, json.loads(text), hdrs
    except json.JSONDecodeError:
        return status, text, hdrs


@pytest.fixture(scope="module")
def server(pipeline):
    from cora.server import BackgroundServer, ServeConfig, create_app

    with BackgroundServer(create_app(pipeline, ServeConfig(max_body_bytes=2048, max_k=5))) as url:
        yield url


@case("silently wrong", "`POST /retrieve {question, lang}`",
      "the hits of `Retriever.search(question, k, lang=lang)` (lang decides BM25 fusion and the query tower)")
def test_retrieve_endpoint_honours_lang(server, pipeline):
    q = "tee ist ein getränk aus blättern"
    by_lang = {lang: [h.passage_id for h in pipeline.retriever.search(q, k=4, lang=lang)] for lang in ("de", "fr")}
    assert by_lang["de"] != by_lang["fr"]  # the language matters for this question (fused vs dense only)
    for lang, expected in by_lang.items():
        status, body, _ = request(server, "/retrieve", {"question": q, "lang": lang, "k": 4})
        assert status == 200 and [h["id"] for h in body["hits"]] == expected, lang


def test_server_refuses_questions_without_letters(server):
    for q in NO_LETTERS:
        for path in ("/answer", "/retrieve"):
            status, body, _ = request(server, path, {"question": q})
            assert status == 422 and "without letters or digits" in body["detail"], (path, q, body)
            assert [e["field"] for e in body["errors"]] == ["question"]


ROWS.append(("silently wrong", f"`POST /answer` or `/retrieve` with one of those questions ({SHOWN})",
             "422 naming the field `question`", "test_server_refuses_questions_without_letters"))


@case("server", "a body over `--max-body-bytes` sent chunked (no Content-Length)",
      "413 (as for a declared length), not 400")
def test_chunked_oversized_body_is_413(server):
    status, body, _ = request(server, "/answer", {"question": "x" * 5000}, chunked=True)
    assert status == 413 and "2048 bytes" in body["detail"]
    status, body, _ = request(server, "/answer", {"question": "der mond", "lang": "de"}, chunked=True)
    assert status == 200  # a small chunked body is read as usual


@case("server", "a request whose Host header is not the server's (`Host: evil.example`: DNS rebinding)",
      "400 `Host header not allowed`; loopback names pass; `--allowed-hosts` widens the list")
def test_host_header_is_checked(server):
    status, body, _ = request(server, "/health", headers={"Host": "evil.example"})
    assert status == 400 and "Host header" in body["detail"]
    status, body, _ = request(server, "/answer", {"question": "der mond"}, headers={"Host": "evil.example:80"})
    assert status == 400
    for host in ("localhost", "127.0.0.1:8000", "[::1]:8000"):
        assert request(server, "/health", headers={"Host": host})[0] == 200, host


class SlowPipeline:
    """A pipeline whose model call takes ``seconds`` per batch; counts the questions it actually computed."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds, self.computed = inner, seconds, 0
        self.config, self.retriever, self.reader = inner.config, inner.retriever, inner.reader

    def answer_batch(self, questions, langs=None, k=None):
        time.sleep(self.seconds)
        self.computed += len(questions)
        return self.inner.answer_batch(questions, langs, k)

    def answer(self, question, lang=None, k=None):
        return self.answer_batch([question], [lang], k)[0]


@case("overload", "a burst of 40 requests at once, 4x what the server answers within `--timeout-s 1`",
      "each answered (200) or refused at once (503 + Retry-After) within the timeout; timed-out work is dropped, "
      "not run; a request after the burst is answered within one timeout")
def test_overload_is_refused_fast_and_abandoned_work_is_dropped(pipeline):
    from cora.server import BackgroundServer, ServeConfig, create_app

    slow = SlowPipeline(pipeline, 0.25)
    config = ServeConfig(timeout_s=1.0, max_batch=2, batch_window_ms=1)
    app = create_app(slow, config)
    with BackgroundServer(app) as url:
        assert request(url, "/answer", {"question": "der mond", "lang": "de"})[0] == 200  # measures the speed
        results = []

        def ask(i):
            t0 = time.perf_counter()
            status, _, headers = request(url, "/answer", {"question": f"der mond {i}", "lang": "de"})
            results.append((status, time.perf_counter() - t0, headers.get("retry-after")))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = [s for s, _, _ in results]
        assert set(statuses) <= {200, 503, 504} and statuses.count(200) >= 2, statuses
        assert statuses.count(503) >= 20 and statuses.count(504) <= 2, statuses
        assert max(seconds for _, seconds, _ in results) < 1.0 + 0.5
        assert all(int(retry) >= 1 for s, _, retry in results if s == 503)
        time.sleep(0.5)  # work still running for timed-out requests would show in `computed` now
        assert slow.computed <= 1 + statuses.count(200) + 2 * statuses.count(504)
        t0 = time.perf_counter()
        assert request(url, "/answer", {"question": "der mond", "lang": "de"})[0] == 200
        assert time.perf_counter() - t0 < 1.0


# ----------------------------------------------------------------------------------- one line, no traceback
@dataclass
class OneLine:
    given: str
    message: str
    make: object = field(repr=False)  # (tmp_path, datastore path, index path) -> argv


def _latin1(tmp):
    (tmp / "p.jsonl").write_bytes('{"id": "a", "lang": "de", "text": "Größe"}\n'.encode("latin-1"))
    return ["datastore", "build", tmp / "p.jsonl", "--out", tmp / "o"]


def _binary(tmp):
    (tmp / "p.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return ["datastore", "build", tmp / "p.jsonl", "--out", tmp / "o"]


def _binary_tsv(tmp):
    (tmp / "p.tsv").write_bytes(b"1\t\x89PNG\r\n\x1a\n\x00\x00\tT\n")
    return ["datastore", "build", tmp / "p.tsv", "--out", tmp / "o", "--lang", "en"]


def _surrogate(tmp):
    (tmp / "p.jsonl").write_text('{"id": "a", "lang": "en", "text": "bad \\ud800 escape"}\n', encoding="utf-8")
    return ["datastore", "build", tmp / "p.jsonl", "--out", tmp / "o"]


def _truncated_gz(tmp):
    data = gzip.compress("".join(json.dumps(p) + "\n" for p in CORPUS * 50).encode())
    (tmp / "p.jsonl.gz").write_bytes(data[: len(data) // 2])
    return ["datastore", "build", tmp / "p.jsonl.gz", "--out", tmp / "o"]


def _folder_input(tmp):
    (tmp / "d.jsonl").mkdir()
    return ["datastore", "build", tmp / "d.jsonl", "--out", tmp / "o"]


def _folder_questions(tmp, index):
    (tmp / "q.jsonl").mkdir()
    return ["retrieve", "--index", index, "--questions", tmp / "q.jsonl", "--out", tmp / "h.jsonl"]


def _out_dot(tmp):
    src = write_corpus(tmp / "p.jsonl")
    (tmp / "work").mkdir()
    (tmp / "work" / "notes.md").write_text("mine")
    os.chdir(tmp / "work")
    return ["datastore", "build", src, "--out", ".", "--overwrite"]


def _corrupt_meta(tmp, ds):
    shutil.copytree(ds, tmp / "ds")
    (tmp / "ds" / "datastore.json").write_text('{"size": 10, "langu')
    return ["datastore", "info", tmp / "ds"]


def _corrupt_arrow(tmp, ds):
    shutil.copytree(ds, tmp / "ds")
    (tmp / "ds" / "passages.arrow").write_bytes(b"\x00" * 100)
    return ["datastore", "info", tmp / "ds"]


def _index_missing_field(tmp, index):
    shutil.copytree(index, tmp / "i")
    cfg = json.loads((tmp / "i" / "index.json").read_text())
    del cfg["encoder"]
    (tmp / "i" / "index.json").write_text(json.dumps(cfg))
    return ["index", "info", tmp / "i"]


def _bad_control_char(tmp):
    (tmp / "p.jsonl").write_text('{"id": "a", "lang": "en", "text": "tab\there"}\n', encoding="utf-8")
    return ["datastore", "build", tmp / "p.jsonl", "--out", tmp / "o"]


def _pipeline_no_index(tmp):
    return ["pipeline", "create", "--index", tmp / "missing", "--out", tmp / "pipe"]


def _pipeline_no_reader(tmp, index):
    return ["pipeline", "create", "--index", index, "--reader", tmp / "missing", "--out", tmp / "pipe"]


ONE_LINE = [
    OneLine("a Latin-1 file (`Größe` as byte 0xf6)", "p.jsonl:1: is not UTF-8 text (byte 0xf6", _latin1),
    OneLine("a binary file (PNG) given as JSONL", "p.jsonl:1: is not UTF-8 text (byte 0x89", _binary),
    OneLine("a binary field in a w100 TSV", "p.tsv:1: is not UTF-8 text", _binary_tsv),
    OneLine("a JSON `\\ud800` escape (a lone surrogate)", "p.jsonl:1: holds an unpaired surrogate", _surrogate),
    OneLine("a truncated `.gz`", "truncated or corrupt gzip file", _truncated_gz),
    OneLine("a folder given as the passages file", "d.jsonl: is a folder; give a file", _folder_input),
    OneLine("a folder given as the questions file", "q.jsonl: is a folder; give a file", _folder_questions),
    OneLine("`datastore build --out . --overwrite` in a folder of other files", "not a cora datastore", _out_dot),
    OneLine("a corrupt datastore.json", "datastore.json is corrupt", _corrupt_meta),
    OneLine("a corrupt passages.arrow", "passages.arrow is corrupt or truncated", _corrupt_arrow),
    OneLine("an index.json missing a field", "missing field(s) ['encoder']", _index_missing_field),
    OneLine("a raw tab inside a JSON string", "invalid JSON (Invalid control character at column", _bad_control_char),
    OneLine("`pipeline create --index` of a missing folder", "is not a cora index", _pipeline_no_index),
    OneLine("`pipeline create --reader` of a missing folder", "is not a cora reader", _pipeline_no_reader),
]
ROWS.extend(("one line, no traceback", c.given, f"exit 2, one line: `{c.message}`",
             "test_mistakes_are_one_line_errors") for c in ONE_LINE)


@pytest.mark.parametrize("c", ONE_LINE, ids=[c.make.__name__.strip("_") for c in ONE_LINE])
def test_mistakes_are_one_line_errors(c, datastore, index_dir, tmp_path, capsys, monkeypatch):
    import inspect

    monkeypatch.chdir(tmp_path)  # _out_dot changes folder; monkeypatch restores it
    params = list(inspect.signature(c.make).parameters)
    extra = {"ds": datastore.path, "index": index_dir}
    argv = c.make(tmp_path, *[extra[p] for p in params[1:]])
    code, err = run_cli(argv, capsys)
    assert_one_line(code, err, c.message)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # nothing half-written left


@case("one line, no traceback", "`cora datastore info DS | head -3` (the reader closes the pipe)",
      "stops quietly: no traceback, exit 141")
def test_closed_pipe_is_quiet(datastore):
    proc = subprocess.Popen([sys.executable, "-m", "cora.cli", "datastore", "info", str(datastore.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # closed before cora writes: its first flush meets a broken pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# ----------------------------------------------------------------------------------------------- the docs
def render() -> str:
    lines = ["# What cora does with bad input, damaged files and overload", "",
             "Generated from the cases of `tests/test_robustness.py` (`python -m tests.test_robustness` rewrites "
             "it); each row is checked by the test named in its last column.", ""]
    area = None
    for row_area, given, behaviour, test in ROWS:
        if row_area != area:
            area = row_area
            lines += ["", f"## {area[0].upper() + area[1:]}", "", "| input | behaviour | test |", "|---|---|---|"]
        cell = [s.replace("|", "\\|") for s in (given, behaviour)]
        lines.append(f"| {cell[0]} | {cell[1]} | `{test}` |")
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def test_the_docs_table_is_generated_from_these_cases():
    assert DOC.read_text(encoding="utf-8") == render(), "run: python -m tests.test_robustness"


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC} ({len(ROWS)} rows)")
