"""The pipeline's typed per-stage results, which the loop and the recipes compose instead of rebuilding
retrieve -> read -> project, checked against the plain path."""

from __future__ import annotations

import pytest

from cora.datastore import Datastore, read_jsonl
from cora.errors import CoraError
from cora.evaluation.report import f1_em_table

from .conftest import make_tiny_reader

QUESTIONS = ["where is the nile river", "what does the moon orbit", "woraus ist tee"]
LANGS = ["en", "en", "de"]


@pytest.fixture(scope="module")
def pipeline(datastore, tiny_encoder, tiny_encoder_dir, tmp_path_factory):
    from cora.index import DenseIndex, build_index
    from cora.pipeline import Pipeline, PipelineConfig
    from cora.retriever import Retriever

    tmp = tmp_path_factory.mktemp("pipe")
    build_index(datastore, tiny_encoder, tmp / "index", str(tiny_encoder_dir), factory="Flat", show_progress=False)
    reader = make_tiny_reader(tiny_encoder_dir)
    return Pipeline(Retriever(tiny_encoder, DenseIndex.load(tmp / "index"), datastore), reader,
                    PipelineConfig(str(tmp / "index"), "tiny", k=3, max_k=10))


def test_details_record_every_stage_and_match_the_plain_path(pipeline, datastore):
    from cora.reader.projection import project_answer

    plain = pipeline.answer_batch(QUESTIONS, LANGS)
    results = pipeline.answer_batch(QUESTIONS, LANGS, details=True, search_k=6)
    assert [r.answer for r in results] == plain
    hits = pipeline.retriever.search_batch(QUESTIONS, k=6, langs=LANGS)
    for q, lang, res, hs in zip(QUESTIONS, LANGS, results, hits, strict=True):
        assert (res.question, res.lang) == (q, lang)
        assert [h.passage_id for h in res.hits] == [h.passage_id for h in hs]  # deeper than the 3 passages read
        assert [p.id for p in res.passages] == [h.passage_id for h in hs[:3]]
        # The answer before projection is the reader's on those passages; the final one its projection.
        assert res.read == pipeline.reader.read(q, res.passages, lang)
        assert res.answer == project_answer(pipeline.reader, q, res.read, datastore, "reread")
    with pytest.raises(CoraError, match="search_k"):
        pipeline.answer_batch(QUESTIONS, LANGS, k=3, search_k=2)


def test_projection_follows_the_links_datastore(pipeline, datastore, corpus_file, tmp_path):
    from cora.pipeline import Pipeline

    english = Datastore.build((x for x in read_jsonl(corpus_file) if x[1].lang == "en"), tmp_path / "en")
    # With links to a store that holds no German passage nothing can be projected into German.
    no_links = Pipeline(pipeline.retriever, pipeline.reader, pipeline.config, links=english)
    en_answer = pipeline.reader.read("woraus ist tee", [datastore.get("tea-en")], "de")
    assert not no_links.project("woraus ist tee", en_answer).projected
    projected = pipeline.project("woraus ist tee", en_answer)
    assert projected.projected and projected.evidence[1].passage_id == "tea-de"


def test_f1_em_table_per_language_and_macro():
    table = f1_em_table({"en": [(1.0, 1.0), (0.5, 0.0)], "de": [(0.0, 0.0)], "fr": []}, ["en", "de", "fr"])
    assert table == {"en": {"F1": 75.0, "EM": 50.0, "n": 2}, "de": {"F1": 0.0, "EM": 0.0, "n": 1},
                     "macro": {"F1": 37.5, "EM": 25.0}}
    assert list(f1_em_table({"en": [(1.0, 1.0)], "de": [(0.0, 0.0)]}, counts=False)) == ["de", "en", "macro"]
    assert f1_em_table({}) == {}
