"""Re-ranked compressed search: IVF-PQ candidates re-scored against fp16 vectors memory-mapped from disk."""

from __future__ import annotations

import numpy as np
import pytest

from cora.errors import CoraError
from cora.index import (
    VECTORS_FILE,
    DenseIndex,
    IndexConfig,
    append_vectors,
    auto_factory,
    auto_rerank_factor,
    build_index,
    gather_rows,
    open_vectors,
    rerank,
)


def _unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain exact search: every score, a stable sort (equal scores keep the lower row first)."""
    scores = queries @ vectors.T                                    # [Q, N]
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]        # [Q, k]
    return np.take_along_axis(scores, rows, axis=1), rows


@pytest.fixture(scope="module")
def pq_index(tmp_path_factory):
    """500 random 32-dim vectors in IVF8,PQ8x4 (4 bytes a vector: lossy) with their fp16 copies on disk."""
    import faiss

    rng = np.random.default_rng(0)
    xb, xq = _unit(rng, 500, 32), _unit(rng, 20, 32)
    index = faiss.index_factory(32, "IVF8,PQ8x4", faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add(xb)
    path = tmp_path_factory.mktemp("pq") / VECTORS_FILE
    append_vectors(path, 0, [xb[:200], xb[200:]], 32)
    config = IndexConfig(factory="IVF8,PQ8x4", encoder="none", dim=32, ntotal=500, nprobe=8, rerank_factor=5)
    return DenseIndex(index, config, open_vectors(path, 500, 32)), xb, xq


def test_rerank_covering_every_candidate_equals_exact_search(pq_index):
    dense, xb, xq = pq_index
    scores, rows = dense.search(xq, 100)  # 5 x 100 = 500 candidates: all of them, nprobe 8 = every list
    want_scores, want_rows = _exact(xq, xb.astype(np.float16).astype(np.float32), 100)
    np.testing.assert_array_equal(rows, want_rows)  # exact ranking of the fp16 vectors
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)
    fp32_scores, fp32_rows = _exact(xq, xb, 100)
    np.testing.assert_allclose(scores, fp32_scores, rtol=0, atol=2e-3)  # fp16 storage costs < 2e-3 of a cosine
    assert np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(rows, fp32_rows, strict=True)]) >= 0.99
    # The PQ codes alone rank differently: the re-rank is what makes the results exact.
    dense.config.rerank_factor = 0
    try:
        _, pq_rows = dense.search(xq, 100)
    finally:
        dense.config.rerank_factor = 5
    assert not np.array_equal(pq_rows, want_rows)


def test_partial_rerank_only_reorders_the_candidates(pq_index):
    dense, xb, xq = pq_index
    _, rows = dense.search(xq, 10)  # rerank_factor 5: 50 candidates, so re-rank them by hand
    _, candidates = dense.index.search(xq, 50)
    for q, cand, got in zip(xq, candidates, rows, strict=True):
        exact = xb[cand].astype(np.float16).astype(np.float32) @ q
        order = cand[np.lexsort((cand, -exact))][:10]
        np.testing.assert_array_equal(got, order)


def test_rerank_skips_missing_and_repeated_candidates_and_pads():
    vectors = np.eye(4, dtype=np.float16)
    q = np.array([[0.1, 0.9, 0.5, 0.0]], np.float32)
    scores, rows = rerank(vectors, q, np.array([[2, -1, 1, 2, -1]]), k=4)
    assert rows.tolist() == [[1, 2, -1, -1]]
    np.testing.assert_allclose(scores[0, :2], [0.9, 0.5], atol=1e-3)
    assert np.isneginf(scores[0, 2:]).all()


def test_reranked_index_round_trip_keeps_vectors_on_disk(datastore, tiny_encoder, tiny_encoder_dir, tmp_path):
    built = build_index(datastore, tiny_encoder, tmp_path, str(tiny_encoder_dir), factory="IVF2,PQ4x2",
                        rerank_factor=50, show_progress=False)
    n, d = len(datastore), tiny_encoder.dim
    assert (tmp_path / VECTORS_FILE).stat().st_size == n * d * 2  # fp16, no header
    loaded = DenseIndex.load(tmp_path)
    assert loaded.config.rerank_factor == 50 and loaded.config.factory == "IVF2,PQ4x2"
    assert isinstance(loaded.vectors, np.memmap) and loaded.vectors.mode == "r"  # mapped, not read into memory
    assert loaded.vectors.dtype == np.float16 and loaded.vectors.shape == (n, d)
    passages = tiny_encoder.encode_passages([p.title for p in datastore], [p.text for p in datastore])
    np.testing.assert_array_equal(loaded.vectors, passages.astype(np.float16))
    q = tiny_encoder.encode_queries(["der mond umkreist die erde", "tea leaves", "nile river"])
    scores, rows = loaded.search(q, 5)
    want_scores, want_rows = _exact(q, passages.astype(np.float16).astype(np.float32), 5)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    for a, b in zip(built.search(q, 5), (scores, rows), strict=True):
        np.testing.assert_array_equal(a, b)


def test_truncated_vectors_file_is_a_clear_error(datastore, tiny_encoder, tiny_encoder_dir, tmp_path):
    build_index(datastore, tiny_encoder, tmp_path, str(tiny_encoder_dir), factory="IVF2,PQ4x2", rerank_factor=4,
                show_progress=False)
    path = tmp_path / VECTORS_FILE
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(CoraError, match="missing or truncated"):
        DenseIndex.load(tmp_path)


def test_rebuilding_over_a_reranked_index_is_allowed(datastore, tiny_encoder, tiny_encoder_dir, tmp_path):
    from cora.index import check_index_output

    build_index(datastore, tiny_encoder, tmp_path, str(tiny_encoder_dir), factory="IVF2,PQ4x2", rerank_factor=4,
                show_progress=False)
    assert check_index_output(tmp_path, overwrite=True) == tmp_path  # vectors.f16 is part of an index folder


def test_flat_and_explicit_factories_do_not_rerank_by_default(datastore, tiny_encoder, tiny_encoder_dir, tmp_path):
    index = build_index(datastore, tiny_encoder, tmp_path, str(tiny_encoder_dir), factory="IVF2,PQ4x2",
                        show_progress=False)
    assert index.config.rerank_factor == 0 and index.vectors is None and not (tmp_path / VECTORS_FILE).exists()


def test_auto_reranks_exactly_where_it_picks_ivf_pq():
    for n in (2_400, 200_000, 200_001, 1_000_000, 40_000_000):
        assert (auto_rerank_factor(n) > 0) == auto_factory(n, 384).startswith("IVF"), n


def test_parallel_row_reads_equal_serial_ones(pq_index):
    dense, xb, xq = pq_index
    serial = dense.search(xq, 50)
    dense.config.rerank_io_threads = 4
    try:
        parallel = dense.search(xq, 50)
    finally:
        dense.config.rerank_io_threads = 0
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
    ids = np.arange(3, 499, 7)
    np.testing.assert_array_equal(gather_rows(dense.vectors, ids, dense._pool, 4), dense.vectors[ids])


def test_nprobe_beyond_the_list_count_is_clamped(tmp_path):
    """faiss' fast-scan IVF searches wrongly with nprobe > nlist; the default nprobe (32) exceeds a small index's."""
    import faiss

    rng = np.random.default_rng(1)
    xb, xq = _unit(rng, 2_000, 32), _unit(rng, 10, 32)
    index = faiss.index_factory(32, "IVF8,PQ8x4fsr", faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add(xb)
    path = tmp_path / VECTORS_FILE
    append_vectors(path, 0, [xb], 32)
    dense = DenseIndex(index, IndexConfig(factory="IVF8,PQ8x4fsr", encoder="none", dim=32, ntotal=2_000,
                                          nprobe=32, rerank_factor=10), open_vectors(path, 2_000, 32))
    assert faiss.extract_index_ivf(dense.index).nprobe == 8
    _, rows = dense.search(xq, 100)  # 1,000 candidates from every list
    exact = _exact(xq, xb.astype(np.float16).astype(np.float32), 100)[1]
    found = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(rows, exact, strict=True)])
    assert found >= 0.99  # unclamped (nprobe 32 of 8 lists), faiss 1.15 finds 0.44 of them


def test_passage_vectors_read_the_fp16_copy_where_faiss_cannot_reconstruct(pq_index):
    dense, xb, _ = pq_index
    got = dense.passage_vectors(10, 20)
    assert got.dtype == np.float32 and got.shape == (10, 32)
    np.testing.assert_array_equal(got, xb[10:20].astype(np.float16).astype(np.float32))
    flat = DenseIndex(_flat(xb), IndexConfig(factory="Flat", encoder="none", dim=32, ntotal=500))
    np.testing.assert_array_equal(flat.passage_vectors(), xb)  # no fp16 copy: faiss reconstructs


def _flat(xb: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return index
