"""The offline default reader: a span head over any Hugging Face encoder, scoring spans jointly across passages."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from cora.config import load_config, save_config
from cora.datastore import Passage
from cora.errors import CoraError
from cora.reader.base import READER_CONFIG_FILE, Answer, Evidence, ReaderConfig, check_read_inputs
from cora.reader.spans import best_spans, joint_span_loss

logger = logging.getLogger(__name__)

HEAD_FILE = "span_head.safetensors"
DELTA_FILE = "reader_delta.safetensors"  # the fine-tuned top layers + head, on top of the backbone ``config.model``


class SpanModel(nn.Module):
    """A Hugging Face encoder plus a linear start/end head."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, **batch) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(**batch).last_hidden_state  # [P, L, H]
        logits = self.head(hidden)  # [P, L, 2]
        return logits[..., 0], logits[..., 1]  # [P, L], [P, L]


class ExtractiveReader:
    """Reads the top-k passages with the question and returns the best span over all of them."""

    def __init__(self, model: SpanModel, tokenizer, config: ReaderConfig, device: str | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)

    # --- construction and persistence
    @classmethod
    def from_backbone(cls, backbone: str = "me5-small", device: str | None = None, **overrides) -> ExtractiveReader:
        """A new reader with a randomly initialised head over a backbone (to be trained)."""
        from cora.models import _load_hf_encoder, default_encoder_config, resolve_backbone

        encoder, tokenizer = _load_hf_encoder(resolve_backbone(backbone))
        prefix = default_encoder_config(backbone).query_prefix
        config = replace(ReaderConfig(backend="extractive", model=backbone, question_prefix=prefix), **overrides)
        model = SpanModel(encoder)
        if config.trainable_layers is not None:
            freeze_below(model, config.trainable_layers)
        return cls(model, tokenizer, config, device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | None = None) -> ExtractiveReader:
        """A full reader folder (``encoder/`` + head) or a delta folder (fine-tuned layers on a backbone)."""
        from safetensors.torch import load_file

        from cora.models import _load_hf_encoder, resolve_backbone

        folder = Path(folder)
        config = load_config(ReaderConfig, folder / READER_CONFIG_FILE)
        if (folder / DELTA_FILE).exists():
            encoder, tokenizer = _load_hf_encoder(resolve_backbone(config.model))
            model = SpanModel(encoder)
            load_delta(model, folder / DELTA_FILE)
            if config.trainable_layers is not None:
                freeze_below(model, config.trainable_layers)
            return cls(model, tokenizer, config, device)
        if not (folder / "encoder").exists():
            raise CoraError(f"{folder}: neither {DELTA_FILE} nor an encoder/ folder; not a trained reader")
        encoder, tokenizer = _load_hf_encoder(str(folder / "encoder"))
        model = SpanModel(encoder)
        model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        return cls(model, tokenizer, config, device)

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        q4_residuals: bool = False) -> None:
        """Save the reader. With ``trainable_layers`` set only the trained weights are written (in ``dtype``);
        loading rebuilds the rest from the backbone named in the config. ``q4_residuals`` stores each trained
        matrix as its difference from the backbone's, in 4-bit blocks (:func:`cora.convert.quantize_q4`): a
        quarter of fp16's size, and the rounding falls on the small fine-tuning change, not on the weights."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.config.trainable_layers is not None:
            state = (q4_residual_state(self.model, self.config.model) if q4_residuals else
                     {k: v.detach().to(dtype).contiguous().cpu() for k, v in trained_state(self.model).items()})
            save_file(state, str(folder / DELTA_FILE), metadata={"backbone": self.config.model})
        else:
            if q4_residuals:
                raise CoraError("q4_residuals needs a partially trained reader (trainable_layers)")
            self.model.encoder.save_pretrained(folder / "encoder", safe_serialization=True)
            self.tokenizer.save_pretrained(folder / "encoder")
            save_file({k: v.contiguous().cpu() for k, v in self.model.head.state_dict().items()},
                      str(folder / HEAD_FILE))
        save_config(self.config, folder / READER_CONFIG_FILE)

    # --- inputs
    def encode_inputs(self, question: str | list[str], passages: list[Passage], windows: bool = False) -> dict:
        """Tokenise (question, passage text) pairs; keep offsets and the mask of passage tokens.

        ``question`` is one question for all passages, or one question per passage (training batches). With
        ``windows`` and a ``stride`` in the config, a passage longer than the input becomes several overlapping
        windows (rows); ``passage_of`` maps each row to its passage."""
        questions = [question] * len(passages) if isinstance(question, str) else list(question)
        if len(questions) != len(passages):
            raise CoraError(f"{len(questions)} questions for {len(passages)} passages")
        limit = self.config.max_length // 2
        prepared = {}
        for q in dict.fromkeys(questions):
            ids = self.tokenizer(self.config.question_prefix + q, add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                logger.warning("question of %d tokens truncated to %d", len(ids), limit)
                prepared[q] = self.tokenizer.decode(ids[:limit])
            else:
                prepared[q] = self.config.question_prefix + q
        overflow = {}
        if windows and self.config.stride:
            overflow = dict(stride=self.config.stride, return_overflowing_tokens=True)
        enc = self.tokenizer(
            [prepared[q] for q in questions], [p.text for p in passages], truncation="only_second",
            max_length=self.config.max_length, padding=True, return_offsets_mapping=True, return_tensors="pt",
            **overflow,
        )
        passage_of = enc.pop("overflow_to_sample_mapping", torch.arange(len(passages)))  # [rows]
        rows = len(passage_of)
        context = torch.tensor([[sid == 1 for sid in enc.sequence_ids(i)] for i in range(rows)])
        offsets = enc.pop("offset_mapping")
        return {"inputs": dict(enc), "context": context, "offsets": offsets, "passage_of": passage_of}

    # --- inference
    @torch.inference_mode()
    def read(self, question: str, passages: list[Passage], answer_lang: str) -> Answer:
        passages = check_read_inputs(question, passages)
        self.model.eval()
        per = self.config.passages_per_forward or (len(passages) if self.device.type == "cuda" else 1)
        parts = [self._logits(question, passages[i : i + per], i) for i in range(0, len(passages), per)]
        # Pad every part to one length; padded positions are not context, so no span can use them and the
        # softmax over spans stays joint across all passages (and all windows of a long passage).
        L = max(p[0].shape[1] for p in parts)
        start = torch.cat([torch.nn.functional.pad(s, (0, L - s.shape[1])) for s, *_ in parts])  # [R, L]
        end = torch.cat([torch.nn.functional.pad(e, (0, L - e.shape[1])) for _, e, *_ in parts])  # [R, L]
        context = torch.cat([torch.nn.functional.pad(c, (0, L - c.shape[1])) for _, _, c, *_ in parts])  # [R, L]
        offsets = torch.cat([torch.nn.functional.pad(o, (0, 0, 0, L - o.shape[1])) for *_, o, _ in parts])
        passage_of = torch.cat([m for *_, m in parts])  # [R] row -> passage index
        spans = best_spans(start, end, context, self.config.max_answer_tokens)
        if not spans:
            raise CoraError("the passages left no room for an answer span (question too long?)")
        best = spans[0]
        p = passages[int(passage_of[best.passage])]
        c0 = int(offsets[best.passage, best.start, 0])
        c1 = int(offsets[best.passage, best.end, 1])
        text = p.text[c0:c1].strip()
        ev = Evidence(p.id, p.lang, p.title, p.text, c0, c1, best.prob)
        return Answer(text, answer_lang, best.prob, [ev])

    def _logits(self, question: str, passages: list[Passage], first: int = 0):
        """Start/end logits [R, L], context mask, offsets and the passage index (counted from ``first``) of
        each of the R rows (one per window)."""
        enc = self.encode_inputs(question, passages, windows=True)
        start, end = self.model(**{k: v.to(self.device) for k, v in enc["inputs"].items()})
        return start.float().cpu(), end.float().cpu(), enc["context"], enc["offsets"], enc["passage_of"] + first

    # --- training
    def loss(self, question: str, passages: list[Passage], answers: list[str]) -> torch.Tensor:
        """Joint marginal span loss for one question over its passages (gold = every answer occurrence)."""
        return self.batch_loss([(question, passages, answers)])

    def batch_loss(self, batch: list[tuple[str, list[Passage], list[str]]]) -> torch.Tensor:
        """Mean joint span loss over (question, passages, answers) triples, all read in one forward pass.

        Every question's spans are still normalised over its own passages only (rows of other questions are
        sliced away before the softmax), so this equals the mean of :meth:`loss` over the batch."""
        questions = [q for q, ps, _ in batch for _ in ps]
        passages = [p for _, ps, _ in batch for p in ps]
        enc = self.encode_inputs(questions, passages)
        start, end = self.model(**{k: v.to(self.device) for k, v in enc["inputs"].items()})  # [sum P, L]
        context = enc["context"].to(self.device)
        losses, row = [], 0
        for _, ps, answers in batch:
            rows = slice(row, row + len(ps))
            gs, ge = gold_token_marks(ps, answers, enc["offsets"][rows], enc["context"][rows])
            losses.append(joint_span_loss(start[rows], end[rows], context[rows], gs.to(self.device),
                                          ge.to(self.device)))
            row += len(ps)
        return torch.stack(losses).mean()


def _layers(model: SpanModel) -> nn.ModuleList:
    layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise CoraError(f"trainable_layers needs a BERT-like encoder (encoder.layer); {type(model.encoder).__name__} "
                        "has none: train the whole model instead")
    return layers


def freeze_below(model: SpanModel, n: int) -> None:
    """Train only the top ``n`` encoder layers and the head; everything below (embeddings included) is frozen."""
    layers = _layers(model)
    if not 0 <= n <= len(layers):
        raise CoraError(f"trainable_layers must be between 0 and {len(layers)}, got {n}")
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    for layer in layers[len(layers) - n:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    for p in model.head.parameters():
        p.requires_grad_(True)


def trained_state(model: SpanModel) -> dict[str, torch.Tensor]:
    """The state entries that training changes (parameters with requires_grad)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


Q4_SUFFIX = ".q4r"  # a delta entry holding a matrix's 4-bit residual against the backbone, not the matrix


def q4_residual_state(model: SpanModel, backbone: str) -> dict[str, torch.Tensor]:
    """The trained state with every matrix the backbone also has replaced by ``name.q4r``: Q4_0 blocks of
    (trained - backbone); other entries (biases, norms, the span head) in fp16."""
    from cora.convert import QK, quantize_q4
    from cora.models import _load_hf_encoder, resolve_backbone

    base, _ = _load_hf_encoder(resolve_backbone(backbone))
    base_state = {f"encoder.{k}": v for k, v in base.state_dict().items()}
    out = {}
    for k, v in trained_state(model).items():
        v = v.detach().float().cpu()
        if v.ndim == 2 and k in base_state and v.numel() % QK == 0:
            raw = quantize_q4((v - base_state[k].float()).numpy())
            out[k + Q4_SUFFIX] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        else:
            out[k] = v.half().contiguous()
    return out


def load_delta(model: SpanModel, path: Path) -> None:
    """Overwrite the model's fine-tuned weights from a delta file; every key must exist in the model. ``.q4r``
    entries are residuals added to the model's current weights, which must be the backbone's (a model just
    built from it)."""
    from safetensors.torch import load_file

    from cora.convert import dequantize_q4

    state = load_file(str(path))
    own = model.state_dict()
    names = {k.removesuffix(Q4_SUFFIX) for k in state}
    unknown = sorted(names - set(own))
    if unknown or "head.weight" not in state:
        raise CoraError(f"{path}: does not fit this backbone (unknown keys {unknown[:3]}, or no span head)")
    weights = {}
    for k, v in state.items():
        if k.endswith(Q4_SUFFIX):
            k = k.removesuffix(Q4_SUFFIX)
            residual = dequantize_q4(v.numpy().tobytes(), own[k].numel()).reshape(own[k].shape)
            weights[k] = own[k] + torch.from_numpy(residual).to(own[k].dtype)
        else:
            weights[k] = v.to(own[k].dtype)
    model.load_state_dict(weights, strict=False)


def gold_token_marks(
    passages: list[Passage], answers: list[str], offsets: torch.Tensor, context: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[P, L] bool marks of the tokens where an answer occurrence starts / ends (exact string matches)."""
    P, L = context.shape
    gold_start = torch.zeros(P, L, dtype=torch.bool)
    gold_end = torch.zeros(P, L, dtype=torch.bool)
    for i, p in enumerate(passages):
        for ans in {a.strip() for a in answers if a and a.strip()}:
            at = p.text.find(ans)
            while at >= 0:
                a0, a1 = at, at + len(ans)
                toks = [t for t in range(L) if context[i, t] and offsets[i, t, 0] < a1 and offsets[i, t, 1] > a0]
                if toks:
                    gold_start[i, toks[0]] = True
                    gold_end[i, toks[-1]] = True
                at = p.text.find(ans, at + 1)
    return gold_start, gold_end
