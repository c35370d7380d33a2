"""Shared plumbing for the benchmark scripts: timing, memory, machine facts, tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

# The shared data folder (XQuAD and the other public sets; see the README), as the tests find it.
SHARED = Path(os.environ.get("CORA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def matmul_peak_gflops(n: int = 2048, seconds: float = 3.0) -> float:
    """The machine's own fp32 matmul rate with torch's default threads (the ceiling our encoder is compared to)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def write_results(path: str | os.PathLike | None, results: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2, ensure_ascii=False))


def print_table(rows: list[dict], columns: list[str]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) and abs(v) < 1000 else (f"{v:,.0f}" if isinstance(v, float) else str(v))


def tiny_encoder_dir(folder: Path) -> Path:
    """A 2-layer random BERT with a word-level tokenizer, for --quick runs that must not need me5-small."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from cora.config import EncoderConfig, save_config

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(500)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=512)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=128, max_position_embeddings=512), add_pooling_layer=False)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_config(EncoderConfig(str(folder), "mean", "", "", True, 32, 512), folder / "encoder_config.json")
    return folder


def synthetic_texts(n: int, words: int = 100, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{j}" for j in rng.integers(0, 500, size=rng.integers(words // 2, words + 1)))
            for _ in range(n)]


def xquad_w100(langs=("en", "de", "zh", "ar", "ru", "th"), limit: int | None = None) -> list[str]:
    """Real passages at w100 length: XQuAD paragraphs cut to their first 100 words (200 characters for zh/th)."""
    from cora.datasets import xquad_file
    from cora.datastore import read_squad
    from cora.languages import NO_SPACE_LANGS

    out = []
    for lang in langs:
        for _, p in read_squad(xquad_file(SHARED, lang), lang, keep_titles=False):
            out.append(p.text[:200] if lang in NO_SPACE_LANGS else " ".join(p.text.split()[:100]))
    return out[:limit] if limit else out
