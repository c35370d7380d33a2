"""'cora index update': build(A) + add(B) + update searches exactly like build(A+B) from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from cora.datastore import Datastore, read_jsonl
from cora.errors import FingerprintMismatch
from cora.index import VECTORS_FILE, DenseIndex, build_index, update_index

QUERIES = ["der mond umkreist die erde", "tea leaves", "el nilo es un río", "a passage without a group"]


@pytest.mark.parametrize("factory, rerank_factor", [("Flat", 0), ("IVF2,Flat", 0), ("IVF2,PQ4x2", 50)])
def test_build_add_update_equals_build_from_scratch(corpus_file, tiny_encoder, tiny_encoder_dir, tmp_path,
                                                    monkeypatch, factory, rerank_factor):
    passages = [p for _, p in read_jsonl(corpus_file)]
    grown_dir = tmp_path / "grown"
    Datastore.build(passages[:6], grown_dir)
    index_dir = tmp_path / "index"
    build_index(Datastore(grown_dir), tiny_encoder, index_dir, str(tiny_encoder_dir), factory=factory,
                rerank_factor=rerank_factor, show_progress=False)
    Datastore.add(grown_dir, passages[6:])
    grown = Datastore(grown_dir)
    calls = []
    real = tiny_encoder.encode_passages
    monkeypatch.setattr(tiny_encoder, "encode_passages",
                        lambda titles, texts, **kw: calls.append(list(texts)) or real(titles, texts, **kw))
    updated = update_index(index_dir, grown, tiny_encoder, show_progress=False)
    monkeypatch.undo()
    assert [t for c in calls for t in c] == [p.text for p in passages[6:]]  # only the new rows were encoded
    scratch = build_index(Datastore.build(passages, tmp_path / "scratch-ds"), tiny_encoder, tmp_path / "scratch",
                          str(tiny_encoder_dir), factory=factory, rerank_factor=rerank_factor, show_progress=False)
    for index in (updated, DenseIndex.load(index_dir)):  # in memory and as saved
        assert len(index) == len(passages) and index.config.ntotal == index.config.datastore_size == len(passages)
        assert index.config.datastore_fingerprint == grown.fingerprint
        index.config.nprobe = 2  # every list: the IVF results are then exact whatever the quantizer learnt
        index._apply_search_params()
        scratch.config.nprobe = 2
        scratch._apply_search_params()
        q = tiny_encoder.encode_queries(QUERIES)
        got, want = index.search(q, 10), scratch.search(q, 10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
        index.check_datastore(grown)  # the updated index serves the grown datastore
    if rerank_factor:
        assert (index_dir / VECTORS_FILE).read_bytes() == (tmp_path / "scratch" / VECTORS_FILE).read_bytes()


def test_update_refuses_a_datastore_the_index_was_not_built_from(corpus_file, tiny_encoder, tiny_encoder_dir,
                                                                 tmp_path):
    from cora.datastore import Passage

    passages = [p for _, p in read_jsonl(corpus_file)]
    other = Datastore.build(passages[:5] + [Passage("x", "en", "", "another first passage", "x")], tmp_path / "o")
    index_dir = tmp_path / "index"
    build_index(other, tiny_encoder, index_dir, str(tiny_encoder_dir), factory="Flat", show_progress=False)
    grown_dir = tmp_path / "grown"
    Datastore.build(passages[:6], grown_dir)
    Datastore.add(grown_dir, passages[6:])
    with pytest.raises(FingerprintMismatch, match="not the first rows"):
        update_index(index_dir, Datastore(grown_dir), tiny_encoder, show_progress=False)
    assert DenseIndex.load(index_dir).config.ntotal == 6  # left as it was


def test_an_index_not_updated_is_refused_by_the_grown_datastore(corpus_file, tiny_encoder, tiny_encoder_dir,
                                                                tmp_path):
    from cora.retriever import Retriever

    passages = [p for _, p in read_jsonl(corpus_file)]
    grown_dir = tmp_path / "grown"
    Datastore.build(passages[:6], grown_dir)
    index_dir = tmp_path / "index"
    build_index(Datastore(grown_dir), tiny_encoder, index_dir, str(tiny_encoder_dir), factory="Flat",
                show_progress=False)
    Datastore.add(grown_dir, passages[6:])
    with pytest.raises(FingerprintMismatch, match="another datastore"):
        Retriever.from_pretrained(index_dir, datastore=grown_dir, device="cpu")


def test_update_with_nothing_new_changes_nothing(datastore, tiny_encoder, tiny_encoder_dir, tmp_path):
    build_index(datastore, tiny_encoder, tmp_path, str(tiny_encoder_dir), factory="Flat", show_progress=False)
    before = (tmp_path / "index.faiss").stat().st_mtime_ns
    assert len(update_index(tmp_path, datastore, tiny_encoder, show_progress=False)) == len(datastore)
    assert (tmp_path / "index.faiss").stat().st_mtime_ns == before


def test_interrupted_update_leaves_the_old_index_and_reruns(corpus_file, tiny_encoder, tiny_encoder_dir, tmp_path,
                                                            monkeypatch):
    passages = [p for _, p in read_jsonl(corpus_file)]
    grown_dir = tmp_path / "grown"
    Datastore.build(passages[:6], grown_dir)
    index_dir = tmp_path / "index"
    build_index(Datastore(grown_dir), tiny_encoder, index_dir, str(tiny_encoder_dir), factory="IVF2,PQ4x2",
                rerank_factor=50, show_progress=False)
    Datastore.add(grown_dir, passages[6:])
    grown = Datastore(grown_dir)
    real = tiny_encoder.encode_passages
    calls = []

    def dies_on_second_chunk(titles, texts, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(titles, texts, **kw)

    monkeypatch.setattr(tiny_encoder, "encode_passages", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        update_index(index_dir, grown, tiny_encoder, chunk=2, show_progress=False)
    old = DenseIndex.load(index_dir)  # still the 6-row index, its first chunk's vectors ignored beyond ntotal
    assert len(old) == 6 and (index_dir / VECTORS_FILE).stat().st_size == 8 * tiny_encoder.dim * 2
    monkeypatch.setattr(tiny_encoder, "encode_passages", real)
    updated = update_index(index_dir, grown, tiny_encoder, chunk=2, show_progress=False)
    assert len(updated) == 10 and (index_dir / VECTORS_FILE).stat().st_size == 10 * tiny_encoder.dim * 2
    want = tiny_encoder.encode_passages([p.title for p in passages], [p.text for p in passages])
    np.testing.assert_array_equal(DenseIndex.load(index_dir).vectors, want.astype(np.float16))


def test_cli_build_with_rerank_then_update(corpus_file, tiny_encoder, tiny_encoder_dir, tmp_path, capsys):
    from cora.cli import main

    passages = [p for _, p in read_jsonl(corpus_file)]
    ds = tmp_path / "ds"
    Datastore.build(passages[:6], ds)
    idx = tmp_path / "idx"
    assert main(["index", "build", "--datastore", str(ds), "--encoder", str(tiny_encoder_dir), "--out", str(idx),
                 "--factory", "IVF2,PQ4x2", "--rerank-factor", "50", "--device", "cpu"]) == 0
    assert DenseIndex.load(idx).config.rerank_factor == 50
    Datastore.add(ds, passages[6:])
    capsys.readouterr()
    assert main(["index", "update", "--index", str(idx), "--datastore", str(ds), "--device", "cpu"]) == 0
    assert "4 vectors added, 10 in all" in capsys.readouterr().out
    updated = DenseIndex.load(idx)
    assert len(updated) == 10 and (idx / VECTORS_FILE).stat().st_size == 10 * tiny_encoder.dim * 2
    want = tiny_encoder.encode_passages([p.title for p in passages], [p.text for p in passages])
    np.testing.assert_allclose(updated.vectors, want.astype(np.float16), atol=1e-3)
