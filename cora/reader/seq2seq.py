"""mGEN: a multilingual seq2seq generator (mT5 in CORA) that writes the answer in the question's language.

Input format (CORA): ``<Q>: {question} [{lang}] <P>:<0: {title}> {text} <1: {title}> {text} ...`` with passages in
rank order and the language tag naming the answer language. Training follows CORA's recipe: from the top 10
retrieved passages, up to 3 answer-containing passages are kept, the rest filled with the highest-ranked
others, and the order shuffled (:func:`training_passages`); source <= 1000 tokens, target <= 25; beam 4 at
inference.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from cora.config import load_config, save_config
from cora.datastore import Passage
from cora.errors import CoraError
from cora.evaluation.text import contains_answer
from cora.fileio import apply_umask
from cora.reader.base import READER_CONFIG_FILE, Answer, Evidence, ReaderConfig, check_read_inputs


def format_source(question: str, lang: str, passages: Sequence[Passage]) -> str:
    """CORA's mGEN input string; passages in the given (rank) order."""
    ctx = " ".join(f"<{i}: {p.title}> {p.text}" for i, p in enumerate(passages))
    return f"<Q>: {question} [{lang}] <P>:{ctx}"


def training_passages(
    ranked: Sequence[Passage], answers: Sequence[str], rng: random.Random, k: int = 10, max_positive: int = 3
) -> list[Passage]:
    """CORA's mGEN training context: up to ``max_positive`` answer-containing passages sampled from the top ``k``,
    filled to ``k`` with the highest-ranked passages that do not contain an answer, shuffled."""
    top = list(ranked[:k])
    has = [contains_answer(p.text, answers) for p in top]
    positives = [p for p, h in zip(top, has, strict=True) if h]
    chosen = rng.sample(positives, min(max_positive, len(positives)))
    # Unsampled positives are not reused as filler, so at most max_positive passages hold the answer; the
    # filler is the best-ranked answerless passages, reaching past the top k when positives were left out.
    others = [p for p in ranked if not contains_answer(p.text, answers)]
    context = chosen + others[: k - len(chosen)]
    rng.shuffle(context)
    return context


class Seq2SeqGenerator:
    """Any Hugging Face seq2seq model (``google/mt5-base`` for CORA) behind the reader interface."""

    def __init__(self, model, tokenizer, config: ReaderConfig, device: str | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)

    @classmethod
    def from_backbone(cls, backbone: str = "google/mt5-base", device: str | None = None, **overrides):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(backbone)
            model = AutoModelForSeq2SeqLM.from_pretrained(backbone)
        except OSError as err:
            raise CoraError(f"cannot load seq2seq model '{backbone}': {err}") from None
        return cls(model, tokenizer, replace(ReaderConfig(backend="seq2seq", model=backbone), **overrides), device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | None = None) -> Seq2SeqGenerator:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        folder = Path(folder)
        config = load_config(ReaderConfig, folder / READER_CONFIG_FILE)
        return cls(AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), config,
                   device)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        save_config(self.config, folder / READER_CONFIG_FILE)
        apply_umask(folder)  # safetensors writes 0600 whatever the umask

    def _source(self, texts: list[str]) -> dict:
        enc = self.tokenizer(texts, truncation=True, max_length=self.config.max_source_length, padding=True,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def loss(self, question: str, lang: str, passages: Sequence[Passage], answer: str) -> torch.Tensor:
        """Teacher-forced cross-entropy of the answer given CORA's input string."""
        return self.source_loss([format_source(question, lang, passages)], [answer])

    def source_loss(self, sources: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
        """Teacher-forced cross-entropy of ``targets`` given already formatted ``sources`` (CORA's ``.source`` /
        ``.target`` lines), padded into one batch: the mean over every target token of the batch."""
        src = self._source(list(sources))
        labels = self.tokenizer(text_target=list(targets), truncation=True, max_length=self.config.max_target_length,
                                padding=True, return_tensors="pt")["input_ids"].to(self.device)
        labels = labels.masked_fill(labels == self.tokenizer.pad_token_id, -100)
        return self.model(**src, labels=labels).loss

    @torch.inference_mode()
    def read(self, question: str, passages: list[Passage], answer_lang: str) -> Answer:
        passages = check_read_inputs(question, passages)
        self.model.eval()
        src = self._source([format_source(question, answer_lang, passages)])
        out = self.model.generate(**src, num_beams=self.config.num_beams, max_new_tokens=self.config.max_target_length,
                                  output_scores=True, return_dict_in_generate=True)
        text = self.tokenizer.decode(out.sequences[0], skip_special_tokens=True).strip()
        score = float(torch.exp(out.sequences_scores[0])) if getattr(out, "sequences_scores", None) is not None \
            else 0.0
        # A generator cites all passages it read; the ones containing the answer string first.
        cited = sorted(passages, key=lambda p: text not in p.text) if text else passages
        evidence = [Evidence(p.id, p.lang, p.title, p.text, *_find(p.text, text)) for p in cited]
        return Answer(text, answer_lang, score, evidence)


def _find(haystack: str, needle: str) -> tuple[int | None, int | None]:
    at = haystack.find(needle) if needle else -1
    return (at, at + len(needle)) if at >= 0 else (None, None)
