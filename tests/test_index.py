"""Index building: sharded == unsharded, resume, merge checks, fingerprint and corruption errors, search."""

from __future__ import annotations

import numpy as np
import pytest

from cora.errors import CoraError, FingerprintMismatch
from cora.index import DenseIndex, build_index, encode_shard, merge_shards, parse_shard, shard_range
from cora.retriever import Retriever


@pytest.mark.parametrize("size, n", [(10, 3), (7, 7), (5, 1), (3, 4), (1_000_003, 64)])
def test_shard_ranges_tile_all_rows(size, n):
    ranges = [shard_range(i, n, size) for i in range(n)]
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert sum(b - a for a, b in ranges) == size


def test_parse_shard_errors():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1-4", "", "a/b"):
        with pytest.raises(CoraError):
            parse_shard(bad)


@pytest.fixture(scope="module")
def flat_index(datastore, tiny_encoder, tmp_path_factory, tiny_encoder_dir):
    out = tmp_path_factory.mktemp("idx") / "flat"
    return build_index(datastore, tiny_encoder, out, str(tiny_encoder_dir), factory="Flat", show_progress=False), out


def test_flat_search_matches_brute_force(flat_index, datastore, tiny_encoder):
    index, _ = flat_index
    passages = tiny_encoder.encode_passages([p.title for p in datastore], [p.text for p in datastore])
    q = tiny_encoder.encode_queries(["der mond umkreist die erde", "tea leaves"])
    scores, rows = index.search(q, 4)
    brute = q @ passages.T
    np.testing.assert_array_equal(rows, np.argsort(-brute, axis=1)[:, :4])
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :4], atol=1e-5)
    assert index.search(q, 100)[1].shape == (2, len(datastore))  # k clipped to the datastore


def test_sharded_build_equals_single_pass(datastore, tiny_encoder, tiny_encoder_dir, tmp_path, flat_index):
    for i in (2, 0, 1):  # any order
        assert build_index(datastore, tiny_encoder, tmp_path, str(tiny_encoder_dir), factory="Flat", shard=(i, 3),
                           show_progress=False) is None
    merged = merge_shards(tmp_path, datastore, "Flat", str(tiny_encoder_dir), tiny_encoder.config)
    assert len(merged) == len(datastore)
    single, _ = flat_index
    np.testing.assert_allclose(merged.index.reconstruct_n(0, len(datastore)),
                               single.index.reconstruct_n(0, len(datastore)), atol=1e-6)
    assert not list((tmp_path / "shards").glob("*.npy"))  # cleaned after merge


def test_merge_refuses_missing_or_incomplete_shards(datastore, tiny_encoder, tiny_encoder_dir, tmp_path):
    encode_shard(datastore, tiny_encoder, tmp_path, (0, 2), show_progress=False)
    with pytest.raises(CoraError, match=r"shards \[1\] of 2 are missing"):
        merge_shards(tmp_path, datastore, "Flat", str(tiny_encoder_dir), tiny_encoder.config)


def test_interrupted_shard_resumes_without_redoing_work(datastore, tiny_encoder, tiny_encoder_dir, tmp_path,
                                                         flat_index, monkeypatch):
    calls = []
    real = tiny_encoder.encode_passages

    def flaky(titles, texts, **kw):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the first chunk was written
        return real(titles, texts, **kw)

    monkeypatch.setattr(tiny_encoder, "encode_passages", flaky)
    with pytest.raises(KeyboardInterrupt):
        encode_shard(datastore, tiny_encoder, tmp_path, (0, 1), chunk=4, show_progress=False)
    with pytest.raises(CoraError, match="incomplete"):
        merge_shards(tmp_path, datastore, "Flat", str(tiny_encoder_dir), tiny_encoder.config)
    calls.clear()
    monkeypatch.setattr(tiny_encoder, "encode_passages", real)
    monkeypatch.setattr(tiny_encoder, "encode_passages", lambda t, x, **kw: calls.append(len(x)) or real(t, x, **kw))
    encode_shard(datastore, tiny_encoder, tmp_path, (0, 1), chunk=4, show_progress=False)
    assert calls == [4, 2]  # rows 4..9 only: the first chunk was not redone
    merged = merge_shards(tmp_path, datastore, "Flat", str(tiny_encoder_dir), tiny_encoder.config)
    np.testing.assert_allclose(merged.index.reconstruct_n(0, len(datastore)),
                               flat_index[0].index.reconstruct_n(0, len(datastore)), atol=1e-6)


def test_ivf_factory_trains_and_finds_exact_duplicates(datastore, tiny_encoder, tiny_encoder_dir, tmp_path):
    index = build_index(datastore, tiny_encoder, tmp_path, str(tiny_encoder_dir), factory="IVF2,Flat",
                        show_progress=False)
    index.config.nprobe = 2
    index._apply_search_params()
    passages = tiny_encoder.encode_passages([p.title for p in datastore], [p.text for p in datastore])
    _, rows = index.search(passages, 1)
    assert rows[:, 0].tolist() == list(range(len(datastore)))


def test_bad_factory_is_a_clear_error(datastore, tiny_encoder, tiny_encoder_dir, tmp_path):
    with pytest.raises(CoraError, match="invalid FAISS factory string"):
        build_index(datastore, tiny_encoder, tmp_path, str(tiny_encoder_dir), factory="Nonsense12",
                    show_progress=False)


def test_index_refuses_another_datastore(flat_index, corpus_file, tmp_path):
    from cora.datastore import Datastore, Passage, read_jsonl

    _, folder = flat_index
    other = Datastore.build([p for _, p in read_jsonl(corpus_file)][:-1] + [Passage("x", "en", "", "new", "x")],
                            tmp_path / "other")
    with pytest.raises(FingerprintMismatch, match="another datastore"):
        Retriever.from_pretrained(folder, datastore=other, device="cpu")


def test_corrupt_index_file_is_a_clear_error(flat_index, tmp_path):
    import shutil

    _, folder = flat_index
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = (copy / "index.faiss").read_bytes()
    (copy / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(CoraError, match="corrupt or truncated"):
        DenseIndex.load(copy)


def test_retriever_returns_typed_hits_with_text(flat_index, datastore):
    _, folder = flat_index
    retriever = Retriever.from_pretrained(folder, device="cpu")
    hits = retriever.search("der mond umkreist die erde", k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].passage_id == "moon-de" and hits[0].text == "Der Mond umkreist die Erde"
    assert hits[0].group == "moon" and hits[0].lang == "de"
    assert hits[0].score >= hits[1].score >= hits[2].score
    with pytest.raises(CoraError, match="empty question"):
        retriever.search("   ")


def test_hybrid_fuses_bm25_only_for_languages_the_datastore_holds(flat_index, datastore):
    from cora.bm25 import BM25Index, reciprocal_rank_fusion

    _, folder = flat_index
    dense = Retriever.from_pretrained(folder, device="cpu")
    hybrid = Retriever.from_pretrained(folder, device="cpu")
    hybrid.enable_hybrid()
    q = "tee ist ein getränk aus blättern"
    dense_rows = [h.row for h in dense.search(q, k=100, lang="de")]
    _, lexical = BM25Index(datastore).search([q], ["de"], k=100)
    expected = reciprocal_rank_fusion([dense_rows, [int(r) for r in lexical[0]]], top=4)
    got = hybrid.search(q, k=4, lang="de")
    assert [h.row for h in got] == expected and expected != dense_rows[:4]
    assert got[0].score == pytest.approx(1 / 61 + 1 / 61)  # first in both rankings: 1/(60+1) twice
    # A question in a language the datastore lacks (fr) cannot match lexically: it stays dense.
    assert [h.row for h in hybrid.search(q, k=4, lang="fr")] == dense_rows[:4]


def test_auto_factory_follows_the_measured_trade_offs():
    from cora.index import auto_factory

    assert auto_factory(2_400, 384) == "Flat"
    assert auto_factory(200_000, 384) == "Flat"
    assert auto_factory(1_000_000, 384) == "IVF4096,PQ96x4fsr"  # re-ranked: tests/test_index_rerank.py
    assert auto_factory(40_000_000, 384) == "IVF32768,PQ96x4fsr"
