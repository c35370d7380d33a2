"""BM25 tokenisation and retrieval, and reciprocal-rank fusion."""

from cora.bm25 import BM25Index, bm25_tokens, reciprocal_rank_fusion


def test_tokens_words_and_cjk_bigrams():
    assert bm25_tokens("Der Nil, ist ein FLUSS!", "de") == ["der", "nil", "ist", "ein", "fluss"]
    assert bm25_tokens("東京の首都", "ja") == ["東京", "京の", "の首", "首都"]
    assert bm25_tokens("猫", "zh") == ["猫"]


def test_bm25_finds_lexical_matches(datastore):
    index = BM25Index(datastore)
    scores, rows = index.search(["mond erde", "tea leaves drink"], ["de", "en"], k=3)
    assert datastore[int(rows[0][0])].id == "moon-de"
    assert datastore[int(rows[1][0])].id == "tea-en"
    assert scores[0][0] > scores[0][1]


def test_rrf_by_hand():
    # a: 1/61 + 1/62; b: 1/62 + 1/61; c: 1/63; d: 1/63 -> a and b tie, a seen first.
    assert reciprocal_rank_fusion([[1, 2, 3], [2, 1, 4]]) == [1, 2, 3, 4]
    assert reciprocal_rank_fusion([[5, 6], [6, 7]], top=1) == [6]
