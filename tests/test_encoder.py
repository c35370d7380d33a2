"""The encoder: fast batched path vs plain per-text path, pooling, config round trip, registry errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cora.encoder import Encoder, cls_pool, get_pooling, mean_pool
from cora.errors import CoraError

TEXTS = ["the nile is a river in africa flowing north", "tea", "der mond umkreist die erde",
         "la luna orbita la tierra", "el té es una bebida hecha de hojas"]


def test_batched_sorted_encoding_equals_one_at_a_time(tiny_encoder):
    fast = tiny_encoder.encode(TEXTS, "passage", batch_size=2)
    plain = np.stack([tiny_encoder.encode([t], "passage", batch_size=1)[0] for t in TEXTS])
    np.testing.assert_allclose(fast, plain, atol=1e-5)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]
    assert cls_pool(hidden, mask).tolist() == [[1.0, 2.0]]


def test_prefix_changes_embedding_and_vectors_are_normalised(tiny_encoder):
    q = tiny_encoder.encode(["tea"], "query")[0]
    p = tiny_encoder.encode(["tea"], "passage")[0]
    assert not np.allclose(q, p)
    assert abs(np.linalg.norm(q) - 1.0) < 1e-5


def test_save_and_reload_restores_config(tiny_encoder, tmp_path):
    tiny_encoder.save_pretrained(tmp_path / "enc")
    again = Encoder.from_pretrained(str(tmp_path / "enc"), device="cpu")
    assert again.config == tiny_encoder.config
    np.testing.assert_allclose(again.encode(TEXTS), tiny_encoder.encode(TEXTS), atol=1e-6)


def test_unknown_pooling_and_missing_folder_are_clear_errors():
    with pytest.raises(CoraError, match="unknown pooling 'max'"):
        get_pooling("max")
    with pytest.raises(CoraError, match="does not exist"):
        Encoder.from_pretrained("./no/such/model")
    with pytest.raises(CoraError, match="unknown registered model 'me5-smal'; did you mean 'me5-small'"):
        Encoder.from_pretrained("me5-smal")


def test_int8_path_stays_close_to_fp32(tiny_encoder_dir):
    fp32 = Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu")
    int8 = Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu").quantize_int8()
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    cos = (a * b).sum(1)  # both normalised
    assert cos.min() > 0.99
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.model.modules())
