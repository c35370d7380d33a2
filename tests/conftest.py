"""Shared fixtures: a small multilingual corpus, and the tiny randomly initialised models every test builds from
(an encoder, an extractive reader over it, an mT5 generator), each built here once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CORA_SHARED_DATA", REPO.parent / "shared" / "data"))

# A small corpus: 3 topics x 3 languages, groups link the language versions.
CORPUS = [
    {"id": "nile-en", "lang": "en", "title": "Nile", "text": "The Nile is a river in Africa flowing north", "group": "nile"},
    {"id": "nile-de", "lang": "de", "title": "Nil", "text": "Der Nil ist ein Fluss in Afrika", "group": "nile"},
    {"id": "nile-es", "lang": "es", "title": "Nilo", "text": "El Nilo es un río de África", "group": "nile"},
    {"id": "moon-en", "lang": "en", "title": "Moon", "text": "The Moon orbits the Earth", "group": "moon"},
    {"id": "moon-de", "lang": "de", "title": "Mond", "text": "Der Mond umkreist die Erde", "group": "moon"},
    {"id": "moon-es", "lang": "es", "title": "Luna", "text": "La Luna orbita la Tierra", "group": "moon"},
    {"id": "tea-en", "lang": "en", "title": "Tea", "text": "Tea is a drink made from leaves", "group": "tea"},
    {"id": "tea-de", "lang": "de", "title": "Tee", "text": "Tee ist ein Getränk aus Blättern", "group": "tea"},
    {"id": "tea-es", "lang": "es", "title": "Té", "text": "El té es una bebida hecha de hojas", "group": "tea"},
    {"id": "solo-en", "lang": "en", "title": "", "text": "A passage without a group of its own kind"},
]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "passages.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in CORPUS), encoding="utf-8")
    return path


def make_tiny_encoder(folder: Path, pooling: str = "mean", seed: int = 0) -> Path:
    """A 2-layer, 32-dim BERT with a word-level tokenizer over the corpus vocabulary, saved as a cora encoder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from cora.config import EncoderConfig, save_config

    words = sorted({w for p in CORPUS for w in (p["title"] + " " + p["text"]).lower().split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + ["query:", "passage:", "."] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=128)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128), add_pooling_layer=False)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_config(EncoderConfig(str(folder), pooling, "query: ", "passage: ", True, 16, 64),
                folder / "encoder_config.json")
    return folder


def make_tiny_reader(encoder_dir: Path, seed: int = 0, precision: str | None = None, **config):
    """An extractive reader with a randomly initialised span head on the tiny encoder (``config``: ReaderConfig
    fields; max_length 32 and max_answer_tokens 5 unless given)."""
    import torch

    from cora.encoder import load_hf_encoder
    from cora.reader.base import ReaderConfig
    from cora.reader.extractive import ExtractiveReader, SpanModel

    torch.manual_seed(seed)
    encoder, tokenizer = load_hf_encoder(str(encoder_dir))
    return ExtractiveReader(SpanModel(encoder), tokenizer,
                            ReaderConfig(**{"max_length": 32, "max_answer_tokens": 5, **config}), device="cpu",
                            precision=precision)


def make_tiny_mt5(words, d_model: int = 16, layers: int = 1, seed: int = 0, **config):
    """A randomly initialised mT5 generator with a word-level tokenizer over ``words`` (``config``: ReaderConfig
    fields; backend seq2seq, model 'tiny-mt5', greedy, 4 target tokens unless given)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import MT5Config, MT5ForConditionalGeneration, PreTrainedTokenizerFast

    from cora.reader.base import ReaderConfig
    from cora.reader.seq2seq import Seq2SeqGenerator

    vocab = {w: i for i, w in enumerate(["[PAD]", "</s>", "[UNK]", *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="</s>", unk_token="[UNK]")
    torch.manual_seed(seed)
    model = MT5ForConditionalGeneration(MT5Config(
        vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=layers,
        num_decoder_layers=layers, num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    config = {"backend": "seq2seq", "model": "tiny-mt5", "num_beams": 1, "max_target_length": 4, **config}
    return Seq2SeqGenerator(model, tokenizer, ReaderConfig(**config), device="cpu")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny") / "encoder")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir):
    from cora.encoder import Encoder

    return Encoder.from_pretrained(str(tiny_encoder_dir), device="cpu")


@pytest.fixture(scope="session")
def datastore(corpus_file, tmp_path_factory):
    from cora.datastore import Datastore, read_jsonl

    return Datastore.build(read_jsonl(corpus_file), tmp_path_factory.mktemp("ds") / "ds")


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (set CORA_SHARED_DATA to the shared data folder)")
    return path
