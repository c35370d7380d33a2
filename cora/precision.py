"""Mixed precision on any device: bf16 autocast where the hardware runs it natively, fp32 elsewhere.

One setting, ``precision``, is used for encoding, reading and training:

* ``"auto"`` (the default): bf16 on CUDA and on CPUs with native bf16 matmuls (AVX-512 BF16 or AMX, which
  oneDNN reports), fp32 otherwise. On a 2-core AVX-512 BF16 CPU bf16 autocast encodes 2.45x faster than fp32 at an
  embedding cosine of 0.99999 (docs/reader.md has the measurements).
* ``"bf16"``: force bf16 autocast (slow emulation on CPUs without native support, but allowed);
* ``"fp32"``: no autocast.

Autocast keeps the weights (and so the optimizer's master copies and state) in fp32: only the matmuls run in
bf16, and losses and softmaxes stay fp32 where autocast's own policy says so.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from cora.errors import CoraError

PRECISIONS = ("auto", "bf16", "fp32")
ENV_VAR = "CORA_PRECISION"  # overrides "auto" (e.g. CORA_PRECISION=fp32 for a bit-for-bit fp32 comparison)


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls natively on this CPU (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """'bf16' or 'fp32' for this device, from 'auto' / 'bf16' / 'fp32' (None = 'auto', or $CORA_PRECISION)."""
    precision = precision or os.environ.get(ENV_VAR) or "auto"
    if precision not in PRECISIONS:
        raise CoraError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if kind == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


def autocast(precision: str | None, device: torch.device | str):
    """A context manager: bf16 autocast on ``device`` when ``precision`` resolves to bf16, else nothing."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["PRECISIONS", "cpu_supports_bf16", "resolve_precision", "autocast"]
