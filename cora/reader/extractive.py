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
from cora.reader.spans import joint_span_loss, span_scores

logger = logging.getLogger(__name__)

HEAD_FILE = "span_head.safetensors"
DELTA_FILE = "reader_delta.safetensors"  # the fine-tuned top layers + head, on top of the backbone ``config.model``
DELTA_SHARD = "reader_delta-{:05d}.safetensors"  # a delta too large for one file (> MAX_SHARD_BYTES) is split
MAX_SHARD_BYTES = 4 * 2**20


def delta_files(folder: Path) -> list[Path]:
    """The delta file(s) of a reader folder: one ``reader_delta.safetensors`` or numbered shards; [] if none."""
    folder = Path(folder)
    if (folder / DELTA_FILE).exists():
        return [folder / DELTA_FILE]
    return sorted(folder.glob(DELTA_SHARD.replace("{:05d}", "[0-9]" * 5)))


class SpanModel(nn.Module):
    """A Hugging Face encoder plus a linear start/end head and, optionally, a passage-selection head on the first
    token (DPR's reader: which of the passages read holds the answer)."""

    def __init__(self, encoder, rank_head: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 2)
        self.rank = nn.Linear(encoder.config.hidden_size, 1) if rank_head else None

    def scores(self, **batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Start and end logits [P, L] and the selection logit [P] (None without a selection head)."""
        hidden = self.encoder(**batch).last_hidden_state  # [P, L, H]
        logits = self.head(hidden)  # [P, L, 2]
        rank = self.rank(hidden[:, 0]).squeeze(-1) if self.rank is not None else None  # [P]
        return logits[..., 0], logits[..., 1], rank

    def forward(self, **batch) -> tuple[torch.Tensor, torch.Tensor]:
        start, end, _ = self.scores(**batch)
        return start, end  # [P, L], [P, L]


class ExtractiveReader:
    """Reads the top-k passages with the question and returns the best span over all of them."""

    def __init__(self, model: SpanModel, tokenizer, config: ReaderConfig, device: str | None = None,
                 precision: str | None = None):
        from cora.precision import resolve_precision

        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)  # of inference; training sets its own
        self.model.to(self.device)

    # --- construction and persistence
    @classmethod
    def from_backbone(cls, backbone: str = "me5-small", device: str | None = None, **overrides) -> ExtractiveReader:
        """A new reader with a randomly initialised head over a backbone (to be trained)."""
        from cora.encoder import default_encoder_config, load_hf_encoder, resolve_backbone

        encoder, tokenizer = load_hf_encoder(resolve_backbone(backbone))
        prefix = default_encoder_config(backbone).query_prefix
        config = replace(ReaderConfig(backend="extractive", model=backbone, question_prefix=prefix), **overrides)
        model = SpanModel(encoder, rank_head=config.rank_head)
        if config.trainable_layers is not None:
            freeze_below(model, config.trainable_layers)
        return cls(model, tokenizer, config, device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | None = None,
                        precision: str | None = None) -> ExtractiveReader:
        """A full reader folder (``encoder/`` + head) or a delta folder (fine-tuned layers on a backbone)."""
        from safetensors.torch import load_file

        from cora.encoder import load_hf_encoder, resolve_backbone

        folder = Path(folder)
        config = load_config(ReaderConfig, folder / READER_CONFIG_FILE)
        if delta_files(folder):
            encoder, tokenizer = load_hf_encoder(resolve_backbone(config.model))
            model = SpanModel(encoder, rank_head=config.rank_head)
            load_delta(model, delta_files(folder))
            if config.trainable_layers is not None:
                freeze_below(model, config.trainable_layers)
            return cls(model, tokenizer, config, device, precision)
        if not (folder / "encoder").exists():
            raise CoraError(f"{folder}: neither {DELTA_FILE} (or its shards) nor an encoder/ folder; not a trained "
                            "reader")
        encoder, tokenizer = load_hf_encoder(str(folder / "encoder"))
        model = SpanModel(encoder, rank_head=config.rank_head)
        heads = load_file(str(folder / HEAD_FILE))
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in heads.items() if not k.startswith("rank.")})
        if model.rank is not None:
            model.rank.load_state_dict({k.removeprefix("rank."): v for k, v in heads.items() if k.startswith("rank.")})
        return cls(model, tokenizer, config, device, precision)

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        q4_residuals: bool = False) -> None:
        """Save the reader. With ``trainable_layers`` set only the trained weights are written (in ``dtype``);
        loading rebuilds the rest from the backbone named in the config. ``q4_residuals`` stores each trained
        matrix as its difference from the backbone's, in 4-bit blocks (:func:`cora.convert.quantize_q4`): a
        quarter of fp16's size, and the rounding falls on the small fine-tuning change, not on the weights."""
        from safetensors.torch import save_file

        from cora.fileio import apply_umask

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.config.trainable_layers is not None:
            state = (q4_residual_state(self.model, self.config.model) if q4_residuals else
                     {k: v.detach().to(dtype).contiguous().cpu() for k, v in trained_state(self.model).items()})
            for old in delta_files(folder):
                old.unlink()
            shards = shard_state(state, MAX_SHARD_BYTES)
            for i, shard in enumerate(shards):
                name = DELTA_FILE if len(shards) == 1 else DELTA_SHARD.format(i + 1)
                save_file(shard, str(folder / name), metadata={"backbone": self.config.model})
        else:
            if q4_residuals:
                raise CoraError("q4_residuals needs a partially trained reader (trainable_layers)")
            self.model.encoder.save_pretrained(folder / "encoder", safe_serialization=True)
            self.tokenizer.save_pretrained(folder / "encoder")
            heads = {k: v for k, v in self.model.state_dict().items() if k.startswith(("head.", "rank."))}
            if self.model.rank is None:  # the layout of readers saved before the selection head existed
                heads = {k.removeprefix("head."): v for k, v in heads.items()}
            save_file({k: v.contiguous().cpu() for k, v in heads.items()}, str(folder / HEAD_FILE))
        save_config(self.config, folder / READER_CONFIG_FILE)
        apply_umask(folder)  # safetensors writes 0600 whatever the umask

    def train_layers(self, n: int) -> None:
        """Train (and save) the top ``n`` encoder layers and the heads from now on."""
        freeze_below(self.model, n)
        self.config.trainable_layers = n

    def add_rank_head(self) -> None:
        """Add a new passage-selection head (zero-initialised: it changes no choice until trained)."""
        rank = nn.Linear(self.model.encoder.config.hidden_size, 1).to(self.device)
        nn.init.zeros_(rank.weight)
        nn.init.zeros_(rank.bias)
        self.model.rank = rank
        self.config.rank_head = True

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
        """The answer to ``question`` from ``passages`` (in retrieval order: the first is the retriever's best).

        Every span of every passage (and window) is scored ``start + end`` and normalised jointly (DPR). The
        passage the answer is read from is the one with the best ``fused`` score: its best span's score, plus the
        selection head's logit (``rank_weight``), minus ``rank_prior * ln(1 + rank)``; with neither, that is the
        plain joint argmax. ``length_penalty`` is subtracted per token beyond the first of a span."""
        passages = check_read_inputs(question, passages)
        self.model.eval()
        per = self.config.passages_per_forward or (len(passages) if self.device.type == "cuda" else 1)
        parts = [self._logits(question, passages[i : i + per], i) for i in range(0, len(passages), per)]
        # Pad every part to one length; padded positions are not context, so no span can use them and the
        # softmax over spans stays joint across all passages (and all windows of a long passage).
        L = max(p["start"].shape[1] for p in parts)

        def cat(key, pad):
            return torch.cat([torch.nn.functional.pad(p[key], pad(L - p[key].shape[1])) for p in parts])

        start = cat("start", lambda n: (0, n))  # [R, L]
        end = cat("end", lambda n: (0, n))  # [R, L]
        context = cat("context", lambda n: (0, n))  # [R, L]
        offsets = cat("offsets", lambda n: (0, 0, 0, n))  # [R, L, 2]
        passage_of = torch.cat([p["passage_of"] for p in parts])  # [R] row -> passage index
        rank = torch.cat([p["rank"] for p in parts]) if parts[0]["rank"] is not None else None  # [R]
        choice = choose_span(start, end, context, passage_of, len(passages), self.config, rank)
        if choice is None:
            raise CoraError("the passages left no room for an answer span (question too long?)")
        row, s_tok, e_tok, prob = choice
        p = passages[int(passage_of[row])]
        c0 = int(offsets[row, s_tok, 0])
        c1 = int(offsets[row, e_tok, 1])
        text = p.text[c0:c1].strip()
        ev = Evidence(p.id, p.lang, p.title, p.text, c0, c1, prob)
        return Answer(text, answer_lang, prob, [ev])

    @torch.inference_mode()
    def read_batch(self, questions: list[str], passages: list[list[Passage]], answer_langs: list[str],
                   rows_per_forward: int = 16) -> list[Answer]:
        """:meth:`read` for many questions at once: every (question, passage) window of the batch is sorted by
        length and read ``rows_per_forward`` at a time with padding only to the longest in its group, then each
        question's answer is chosen as :meth:`read` chooses it (same spans, same fused passage choice)."""
        if not len(questions) == len(passages) == len(answer_langs):
            raise CoraError(f"{len(questions)} questions, {len(passages)} passage lists, {len(answer_langs)} languages")
        if not questions:
            return []
        if self.tokenizer.padding_side != "right":  # trimming rows to their length assumes right padding
            return [self.read(q, ps, lang) for q, ps, lang in zip(questions, passages, answer_langs, strict=True)]
        from cora.precision import autocast

        kept = [check_read_inputs(q, ps) for q, ps in zip(questions, passages, strict=True)]
        flat_q = [q for q, ps in zip(questions, kept, strict=True) for _ in ps]
        flat_p = [p for ps in kept for p in ps]
        enc = self.encode_inputs(flat_q, flat_p, windows=True)
        mask = enc["inputs"]["attention_mask"]
        lengths = mask.sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        R, L = mask.shape
        start = torch.full((R, L), 0.0)
        end = torch.full((R, L), 0.0)
        rank = torch.zeros(R) if self.model.rank is not None else None
        self.model.eval()
        for i in range(0, R, rows_per_forward):
            rows = order[i : i + rows_per_forward]
            width = int(lengths[rows].max())
            chunk = {k: v[rows, :width].to(self.device) for k, v in enc["inputs"].items()}
            with autocast(self.precision, self.device):
                s, e, r = self.model.scores(**chunk)
            start[rows, :width], end[rows, :width] = s.float().cpu(), e.float().cpu()
            if rank is not None:
                rank[rows] = r.float().cpu()
        answers, first = [], 0
        passage_of = enc["passage_of"]
        for ps, lang in zip(kept, answer_langs, strict=True):
            rows = torch.nonzero((passage_of >= first) & (passage_of < first + len(ps))).squeeze(1)
            width = int(lengths[rows].max())
            context = enc["context"][rows, :width]
            local = passage_of[rows] - first
            choice = choose_span(start[rows, :width], end[rows, :width], context, local, len(ps), self.config,
                                 None if rank is None else rank[rows])
            if choice is None:
                raise CoraError("the passages left no room for an answer span (question too long?)")
            row, s_tok, e_tok, prob = choice
            p = ps[int(local[row])]
            c0 = int(enc["offsets"][rows[row], s_tok, 0])
            c1 = int(enc["offsets"][rows[row], e_tok, 1])
            answers.append(Answer(p.text[c0:c1].strip(), lang, prob,
                                  [Evidence(p.id, p.lang, p.title, p.text, c0, c1, prob)]))
            first += len(ps)
        return answers

    def _logits(self, question: str, passages: list[Passage], first: int = 0) -> dict:
        """Start/end logits [R, L], selection logits [R] (or None), context mask, offsets and the passage index
        (counted from ``first``) of each of the R rows (one per window)."""
        from cora.precision import autocast

        enc = self.encode_inputs(question, passages, windows=True)
        with autocast(self.precision, self.device):
            start, end, rank = self.model.scores(**{k: v.to(self.device) for k, v in enc["inputs"].items()})
        return {"start": start.float().cpu(), "end": end.float().cpu(), "context": enc["context"],
                "offsets": enc["offsets"], "passage_of": enc["passage_of"] + first,
                "rank": None if rank is None else rank.float().cpu()}

    # --- training
    def loss(self, question: str, passages: list[Passage], answers: list[str]) -> torch.Tensor:
        """Joint marginal span loss for one question over its passages (gold = every answer occurrence)."""
        return self.batch_loss([(question, passages, answers)])

    def batch_loss(self, batch: list[tuple[str, list[Passage], list[str]]]) -> torch.Tensor:
        """Mean joint span loss over (question, passages, answers) triples, all read in one forward pass, plus
        (with a selection head) the passage-selection loss of each question read with several passages.

        Every question's spans are still normalised over its own passages only (rows of other questions are
        sliced away before the softmax), so this equals the mean of :meth:`loss` over the batch."""
        questions = [q for q, ps, _ in batch for _ in ps]
        passages = [p for _, ps, _ in batch for p in ps]
        enc = self.encode_inputs(questions, passages)
        start, end, rank = self.model.scores(**{k: v.to(self.device) for k, v in enc["inputs"].items()})
        context = enc["context"].to(self.device)
        losses, row = [], 0
        for _, ps, answers in batch:
            rows = slice(row, row + len(ps))
            gs, ge = gold_token_marks(ps, answers, enc["offsets"][rows], enc["context"][rows])
            loss = joint_span_loss(start[rows], end[rows], context[rows], gs.to(self.device), ge.to(self.device))
            if rank is not None:
                loss = loss + selection_loss(rank[rows].float(), (gs.any(1) & ge.any(1)).to(self.device))
            losses.append(loss)
            row += len(ps)
        return torch.stack(losses).mean()


def selection_loss(rank: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """-log of the softmax mass of the passages holding the answer, over one question's passages (DPR's passage
    selection); 0 when all or none of them hold it (nothing to choose)."""
    if bool(positive.all()) or not bool(positive.any()):
        return rank.sum() * 0.0
    log_p = torch.log_softmax(rank, dim=0)
    return -torch.logsumexp(log_p[positive], dim=0)


def choose_span(start: torch.Tensor, end: torch.Tensor, context: torch.Tensor, passage_of: torch.Tensor,
                n_passages: int, config: ReaderConfig, rank: torch.Tensor | None = None
                ) -> tuple[int, int, int, float] | None:
    """(row, start token, end token, joint probability) of the answer span; see :meth:`ExtractiveReader.read`.

    start, end: [R, L]; context: [R, L] bool; passage_of: [R] passage index of each row; rank: [R] or None."""
    scores = span_scores(start.float(), end.float(), context, config.max_answer_tokens)  # [R, L, L]
    finite = torch.isfinite(scores)
    if not bool(finite.any()):
        return None
    log_z = torch.logsumexp(scores[finite], dim=0)
    L = start.shape[1]
    if config.length_penalty:
        idx = torch.arange(L)
        scores = scores - config.length_penalty * (idx.view(1, 1, L) - idx.view(1, L, 1)).clamp(min=0)
    best_row, best_pos = scores.reshape(len(scores), -1).max(dim=1)  # [R]
    fused = best_row.clone()
    if rank is not None and config.rank_weight:
        fused = fused + config.rank_weight * rank
    if config.rank_prior:
        fused = fused - config.rank_prior * torch.log1p(passage_of.float())
    row = int(fused.argmax())
    s_tok, e_tok = divmod(int(best_pos[row]), L)
    raw = start[row, s_tok].float() + end[row, e_tok].float()  # the span's score before the penalty
    return row, s_tok, e_tok, float(torch.exp(raw - log_z))


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
    for head in (model.head, model.rank):
        for p in head.parameters() if head is not None else ():
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
    from cora.encoder import load_hf_encoder, resolve_backbone

    base, _ = load_hf_encoder(resolve_backbone(backbone))
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


def shard_state(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split a state dict, in key order, into consecutive shards of at most ``max_bytes`` of tensor data (a
    single tensor larger than that gets a shard of its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    return shards


def load_delta(model: SpanModel, path: Path | list[Path]) -> None:
    """Overwrite the model's fine-tuned weights from a delta file (or its shards); every key must exist in the
    model. ``.q4r`` entries are residuals added to the model's current weights, which must be the backbone's (a
    model just built from it)."""
    from safetensors.torch import load_file

    from cora.convert import dequantize_q4

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    state = {}
    for part in paths:
        state.update(load_file(str(part)))
    path = paths[0]
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
