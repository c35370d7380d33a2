"""Language-link answer projection (CORA's language links, used at answer time).

When the best evidence is in a language other than the answer language and the datastore holds a passage of the
same group in the answer language, the answer is moved into that sibling and both passages are cited. Two ways:

- ``reread``: read the sibling(s) with the question (the reader's own answer in the right language);
- ``align``: find the span of the sibling whose contextual token embeddings are closest to the source span's
  (mean-pooled, cosine), with the encoder the reader reads with; no question involved.

``recipes/xquad_reader.py`` measures both; ``reread`` is the default.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from cora.datastore import Datastore, Passage
from cora.errors import CoraError
from cora.languages import same_language
from cora.reader.base import Answer, Evidence, Reader

logger = logging.getLogger(__name__)

METHODS = ("reread", "align")


def siblings_in(answer: Answer, datastore: Datastore) -> list[Passage]:
    """The answer-language passages language-linked (same group) to the answer's source passage."""
    if not answer.evidence or same_language(answer.evidence[0].lang, answer.lang):
        return []
    source = answer.evidence[0]
    try:
        group = datastore.get(source.passage_id).group
    except KeyError:
        return []
    return [p for p in datastore.rows(datastore.group_rows(group)) if same_language(p.lang, answer.lang)]


def project_answer(reader: Reader, question: str, answer: Answer, datastore: Datastore,
                   method: str = "reread") -> Answer:
    """Return the answer moved into the answer-language sibling of its source passage, if there is one."""
    if method not in METHODS:
        raise CoraError(f"unknown projection method {method!r}; choose one of {', '.join(METHODS)}")
    siblings = siblings_in(answer, datastore)
    if not siblings:
        return answer
    source = answer.evidence[0]
    if method == "reread":
        projected = reader.read(question, siblings, answer.lang)
        target = replace(projected.evidence[0], role="projection")
        text, score = projected.text, projected.score
    else:
        if source.start is None or source.end is None:
            return answer  # generated text has no source span to align
        model, tokenizer = reader.model.encoder, reader.tokenizer
        sibling = siblings[0]
        c0, c1, sim = align_span(model, tokenizer, source.text, source.start, source.end, sibling.text)
        text, score = sibling.text[c0:c1].strip(), answer.score * max(sim, 0.0)
        target = Evidence(sibling.id, sibling.lang, sibling.title, sibling.text, c0, c1, sim, role="projection")
    logger.debug("projected %r (%s) -> %r (%s)", answer.text, source.lang, text, target.lang)
    return Answer(text, answer.lang, score, [source, target], projected=True)


@torch.inference_mode()
def token_embeddings(model, tokenizer, text: str, layer: int | None = None) -> tuple[torch.Tensor, list]:
    """Contextual embeddings of a text's tokens (special tokens dropped) and their character offsets."""
    enc = tokenizer(text, truncation=True, max_length=512, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) for k, v in enc.items()}, output_hidden_states=True)
    hidden = out.hidden_states[layer if layer is not None else len(out.hidden_states) * 2 // 3][0].float().cpu()
    keep = [i for i, (a, b) in enumerate(offsets) if b > a]
    return torch.nn.functional.normalize(hidden[keep], dim=-1), [offsets[i] for i in keep]


def align_span(model, tokenizer, source_text: str, start: int, end: int, target_text: str,
               max_extra: int = 3, layer: int | None = None) -> tuple[int, int, float]:
    """The character span of ``target_text`` most similar to ``source_text[start:end]``.

    Every target span of up to (source span tokens + ``max_extra``) tokens is scored by the cosine between its
    mean token embedding and the source span's (middle-upper layer, where multilingual encoders align words
    best). Returns (start, end, cosine)."""
    src, src_off = token_embeddings(model, tokenizer, source_text, layer)
    tgt, tgt_off = token_embeddings(model, tokenizer, target_text, layer)
    span = [i for i, (a, b) in enumerate(src_off) if a < end and b > start]
    if not span or not len(tgt):
        return 0, 0, 0.0
    query = torch.nn.functional.normalize(src[span].mean(0), dim=0)  # [H]
    width = min(len(tgt), len(span) + max_extra)
    prefix = torch.cat([torch.zeros(1, tgt.shape[1]), tgt.cumsum(0)])  # [T+1, H]
    best = (-2.0, 0, 1)
    for w in range(1, width + 1):
        means = torch.nn.functional.normalize(prefix[w:] - prefix[:-w], dim=-1)  # [T-w+1, H]
        sims = means @ query
        i = int(sims.argmax())
        if float(sims[i]) > best[0]:
            best = (float(sims[i]), i, i + w)
    sim, i, j = best
    return tgt_off[i][0], tgt_off[j - 1][1], sim
