"""recipes/reproduce_cora.py end to end on a miniature of CORA's released inputs, written here in their exact formats
(all_w100.tsv, DPR JSON, XOR-TyDi JSONL, original MKQA), with a tiny random mBERT-style encoder and a tiny random
mT5: every stage runs, every intermediate file has the format the next stage reads, the reports have their keys,
and a rerun skips everything."""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import reproduce_cora  # noqa: E402

# Four topics in English, Finnish and Japanese (Japanese words spaced so the word-level test tokenizers see them).
TOPICS = {
    "helsinki": {"en": ("Helsinki", "Helsinki is the capital of Finland and lies on the Gulf of Finland"),
                 "fi": ("Helsinki", "Helsinki on Suomen pääkaupunki ja sijaitsee Suomenlahden rannalla"),
                 "ja": ("ヘルシンキ", "ヘルシンキ は フィンランド の 首都 です")},
    "sauna": {"en": ("Sauna", 'A sauna is a small room heated to about 80 degrees, a "hot room"'),
              "fi": ("Sauna", "Sauna on huone jonka lämpötila on noin 80 astetta"),
              "ja": ("サウナ", "サウナ は 約 80 度 に 温め られた 部屋 です")},
    "fuji": {"en": ("Mount Fuji", "Mount Fuji is 3776 metres high and is the highest mountain in Japan"),
             "fi": ("Fuji", "Fuji on 3776 metriä korkea ja Japanin korkein vuori"),
             "ja": ("富士山", "富士山 の 高さ は 3776 メートル で 日本 一 高い 山 です")},
    "sibelius": {"en": ("Jean Sibelius", "Jean Sibelius was a Finnish composer born in 1865 in Hämeenlinna"),
                 "fi": ("Jean Sibelius", "Jean Sibelius oli suomalainen säveltäjä joka syntyi vuonna 1865"),
                 "ja": ("シベリウス", "シベリウス は 1865 年 に 生まれた フィンランド の 作曲家 です")},
}
FILLER = {"en": "This passage is about something else entirely number {i}",
          "fi": "Tämä kappale kertoo aivan muusta asiasta numero {i}",
          "ja": "この 段落 は 別 の 話題 です 番号 {i}"}

# XOR-TyDi: questions in fi/ja; English-span train questions answer in English.
XOR_TRAIN_FULL = [("x1", "fi", "Mikä on Suomen pääkaupunki?", ["Helsinki"]),
                  ("x2", "ja", "富士山 の 高さ は ？", ["3776 メートル"]),
                  ("x3", "fi", "Milloin Sibelius syntyi?", ["1865"]),
                  ("x4", "ja", "サウナ は 何 度 ？", ["80 度"])]
XOR_TRAIN_ENG_SPAN = [("x1", "fi", "Mikä on Suomen pääkaupunki?", ["Helsinki"]),  # also in full: full's kept
                      ("e1", "ja", "シベリウス は 何 年 に 生まれた ？", ["1865"]),
                      ("e2", "fi", "Kuinka korkea Fuji on?", ["3776 metres"])]
XOR_DEV = [("d1", "fi", "Mikä on Japanin korkein vuori?", ["Fuji"]),
           ("d2", "ja", "フィンランド の 首都 は ？", ["ヘルシンキ"]),
           ("d3", "fi", "Kuka oli suomalainen säveltäjä?", ["Jean Sibelius", "Sibelius"])]
MKQA = [  # original schema: queries and answers keyed by locale; one unanswerable record (dropped, as in CORA)
    {"example_id": 101, "query": "what is the capital of finland",
     "queries": {"en": "what is the capital of finland", "fi": "mikä on suomen pääkaupunki", "ja": "フィンランド の 首都"},
     "answers": {loc: [{"type": "entity", "text": "Helsinki" if loc != "ja" else "ヘルシンキ", "aliases": []}]
                 for loc in ("en", "fi", "ja")}},
    {"example_id": 102, "query": "how high is mount fuji",
     "queries": {"en": "how high is mount fuji", "fi": "kuinka korkea on fuji", "ja": "富士山 の 高さ"},
     "answers": {loc: [{"type": "number_with_unit", "text": "3776 m", "aliases": ["3776"]}]
                 for loc in ("en", "fi", "ja")}},
    {"example_id": 103, "query": "who will win the next sauna world championship",
     "queries": {"en": "who will win the next sauna world championship", "fi": "kuka voittaa saunan mm-kisat",
                 "ja": "サウナ 世界 選手権 の 次 の 優勝者"},
     "answers": {loc: [{"type": "unanswerable", "text": None}] for loc in ("en", "fi", "ja")}},
]


def _passages() -> list[tuple[str, str, str, str]]:
    """(id, text, title, lang) rows: every topic in every language, then fillers; DPR-style numeric ids."""
    rows = []
    for topic in TOPICS.values():
        for lang, (title, text) in topic.items():
            rows.append((str(len(rows) + 1), text, title, lang))
    for i in range(8):
        for lang, text in FILLER.items():
            rows.append((str(len(rows) + 1), text.format(i=i), f"Other {i}", lang))
    return rows


def _pid(topic: str, lang: str) -> str:
    return str(list(TOPICS).index(topic) * 3 + ["en", "fi", "ja"].index(lang) + 1)


def _ctx(topic: str, lang: str, with_scores: bool = True) -> dict:
    title, text = TOPICS[topic][lang]
    ctx = {"title": title, "text": text, "passage_id": _pid(topic, lang)}
    return {**ctx, "score": 1000, "title_score": 0} if with_scores else ctx


def write_inputs(root: Path) -> dict[str, Path]:
    """Every input of the recipe, in the released formats."""
    root.mkdir(parents=True, exist_ok=True)
    files = {k: root / name for k, name in [
        ("passages", "all_w100.tsv"), ("mdpr", "mdpr_train.json"), ("train", "xor_train_full.jsonl"),
        ("eng", "xor_train_retrieve_eng_span.jsonl"), ("dev", "xor_dev_full_v1_1.jsonl"), ("mkqa", "mkqa.jsonl.gz")]}
    with open(files["passages"], "w", encoding="utf-8", newline="") as fh:  # DPR's writer: csv quoting, \n
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title", "lang"])
        writer.writerows(_passages())
    topics = list(TOPICS)
    dpr = []
    for topic, lang, question in [
            ("helsinki", "en", "what is the capital of finland"), ("fuji", "en", "how high is mount fuji"),
            ("sibelius", "en", "when was sibelius born"), ("sauna", "en", "how hot is a sauna"),
            ("helsinki", "fi", "Mikä on Suomen pääkaupunki? [fi]"), ("fuji", "ja", "富士山 の 高さ は ？ [ja]")]:
        other = topics[(topics.index(topic) + 1) % len(topics)]
        item = {"question": question, "answers": [TOPICS[topic][lang][0]],
                "positive_ctxs": [_ctx(topic, lang, lang == "en")], "negative_ctxs": [],
                "hard_negative_ctxs": [_ctx(other, lang, lang == "en")]}
        item.update({"dataset": "nq_train_psgs_w100"} if lang == "en" else {"lang": lang})
        dpr.append(item)
    files["mdpr"].write_text(json.dumps(dpr, ensure_ascii=False, indent=4), encoding="utf-8")
    for key, rows, split in (("train", XOR_TRAIN_FULL, "train"), ("eng", XOR_TRAIN_ENG_SPAN, "train"),
                             ("dev", XOR_DEV, "dev")):
        files[key].write_text("".join(json.dumps({"id": i, "question": q, "answers": a, "lang": lang, "split": split},
                                                 ensure_ascii=False) + "\n" for i, lang, q, a in rows),
                              encoding="utf-8")
    with gzip.open(files["mkqa"], "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in MKQA))
    return files


def _vocab_words() -> list[str]:
    texts = [t for topic in TOPICS.values() for title, text in topic.values() for t in (title, text)]
    texts += [FILLER[lang].format(i=i) for lang in FILLER for i in range(8)] + [f"Other {i}" for i in range(8)]
    for rows in (XOR_TRAIN_FULL, XOR_TRAIN_ENG_SPAN, XOR_DEV):
        texts += [q for _, _, q, _ in rows] + [a for *_, ans in rows for a in ans]
    texts += [q for r in MKQA for q in r["queries"].values()]
    return sorted({w for t in texts for w in t.lower().split()})


def make_tiny_models(root: Path) -> tuple[Path, Path]:
    """A 2-layer random BERT (CLS pooling, as mDPR) and a 1-layer random mT5, word-level tokenizers over the
    miniature's words, saved as a cora encoder folder and a plain Hugging Face folder (what google/mt5-base is)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import (
        BertConfig,
        BertModel,
        MT5Config,
        MT5ForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    from cora.config import EncoderConfig, save_config

    words = _vocab_words()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    torch.manual_seed(0)
    encoder = root / "tiny-mbert"
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256), add_pooling_layer=False
              ).save_pretrained(encoder)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", model_max_length=256).save_pretrained(encoder)
    save_config(EncoderConfig(str(encoder), "cls", "", "", False, 32, 128), encoder / "encoder_config.json")

    s2s_vocab = {w: i for i, w in enumerate(["[PAD]", "</s>", "[UNK]", "<Q>:", "<P>:", *words])}
    tok = Tokenizer(models.WordLevel(s2s_vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    mt5 = root / "tiny-mt5"
    MT5ForConditionalGeneration(MT5Config(
        vocab_size=len(s2s_vocab), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).save_pretrained(mt5)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="</s>", unk_token="[UNK]",
                            model_max_length=512).save_pretrained(mt5)
    return encoder, mt5


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture()
def recipe_args(tmp_path):
    files = write_inputs(tmp_path / "released")
    encoder, mt5 = make_tiny_models(tmp_path / "models")
    mdpr_cfg = tmp_path / "mdpr.json"
    mdpr_cfg.write_text(json.dumps({"tower": "shared", "temperature": 1.0, "native_positive_rate": 1.0,
                                    "freeze_embeddings": False, "epochs": 2, "batch_size": 2, "lr": 1e-3,
                                    "eval_every": 10**9, "log_every": 1, "seed": 12345}))
    mgen_cfg = tmp_path / "mgen.json"
    mgen_cfg.write_text(json.dumps({"epochs": 2, "batch_size": 2, "lr": 1e-3, "eval_every": 10**9, "log_every": 1,
                                    "max_source_length": 256, "max_target_length": 6, "num_beams": 1}))
    out = tmp_path / "run"
    return out, files, [
        "--out", str(out), "--passages", str(files["passages"]), "--mdpr-train", str(files["mdpr"]),
        "--train-questions", str(files["train"]), "--english-answer-questions", str(files["eng"]),
        "--xor-dev", str(files["dev"]), "--mkqa", str(files["mkqa"]), "--mkqa-langs", "fi", "ja",
        "--encoder", str(encoder), "--mdpr-config", str(mdpr_cfg), "--mgen-model", str(mt5),
        "--mgen-config", str(mgen_cfg), "--index-factory", "Flat", "--retrieve-k", "12", "--read-k", "5",
        "--device", "cpu"]


STAGES = ["datastore", "mkqa-convert", "questions", "questions-mkqa", "mdpr", "index", "retrieve-train",
          "retrieve-xor-dev", "evaluate-retrieval", "mgen-data", "mgen", "pipeline", "answer-xor-dev", "evaluate-xor",
          "answer-mkqa", "evaluate-mkqa", "summary"]


def test_miniature_end_to_end(recipe_args, capsys):
    from cora.evaluation.text import contains_answer  # the answer test of mGEN's training contexts

    out, files, args = recipe_args
    assert reproduce_cora.main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert [line[2:].split(" (")[0] for line in printed.splitlines() if line.startswith("# ")] == STAGES
    assert printed.count("(to run)") == len(STAGES) and not (out / "stages").exists()

    assert reproduce_cora.main([*args, "--in-process"]) == 0
    assert sorted(p.stem for p in (out / "stages").glob("*.json")) == sorted(STAGES)

    # datastore: every passage of the TSV, in its language
    info = json.loads((out / "datastore" / "datastore.json").read_text())
    assert info["size"] == 36 and info["languages"] == {"en": 12, "fi": 12, "ja": 12}
    # questions: XOR-Full train in its own language, English-span ones in English, a shared id read once
    train = {q["id"]: q for q in _jsonl(out / "questions" / "train.jsonl")}
    assert {i: q["answer_lang"] for i, q in train.items()} == {"x1": "fi", "x2": "ja", "x3": "fi", "x4": "ja",
                                                               "e1": "en", "e2": "en"}
    mkqa = _jsonl(out / "questions" / "mkqa.jsonl")
    assert sorted(q["id"] for q in mkqa) == ["101_fi", "101_ja", "102_fi", "102_ja"]  # unanswerable 103 dropped
    # mDPR: a cora encoder folder that indexed the datastore
    assert (out / "mdpr" / "best" / "encoder_config.json").exists()
    assert json.loads((out / "index" / "index.json").read_text())["factory"] == "Flat"
    # retrieval: the top 12 (train) and 5 (dev) with passage text, what mgen-data and xor-retrieve read
    retrieved = _jsonl(out / "retrieval" / "train.jsonl")
    assert {r["id"] for r in retrieved} == set(train) and all(len(r["hits"]) == 12 for r in retrieved)
    assert {"passage_id", "lang", "title", "text"} <= set(retrieved[0]["hits"][0])
    assert all(len(r["hits"]) == 5 for r in _jsonl(out / "retrieval" / "xor_dev.jsonl"))
    # mGEN data: CORA's source/target lines, 10 passages each, at most 3 holding the answer
    sources = (out / "mgen-data" / "train.source").read_text(encoding="utf-8").splitlines()
    targets = (out / "mgen-data" / "train.target").read_text(encoding="utf-8").splitlines()
    assert len(sources) == len(targets) == 6
    texts = {t for topic in TOPICS.values() for _, t in topic.values()} | {
        FILLER[lang].format(i=i) for lang in FILLER for i in range(8)}
    for source, target, row in zip(sources, targets, retrieved, strict=True):
        q = train[row["id"]]
        head = f"<Q>: {q['question']} [{q['answer_lang']}] <P>:"
        assert source.startswith(head + "<0: ") and target == q["answers"][0]
        chunks = source[len(head):].split(" <")
        assert [c.split(":", 1)[0].lstrip("<") for c in chunks] == [str(i) for i in range(10)]
        used = [c.split("> ", 1)[1] for c in chunks]
        assert set(used) <= texts and len(set(used)) == 10
        in_top = sum(contains_answer(h["text"], [target]) for h in row["hits"][:10])
        assert sum(contains_answer(u, [target]) for u in used) == min(3, in_top)
    assert json.loads((out / "mgen-data" / "mgen_data.json").read_text())["counts"]["examples"] == 6
    # mGEN: a seq2seq reader with the config's lengths; the pipeline reads it without projection
    reader_cfg = json.loads((out / "mgen" / "best" / "reader_config.json").read_text())
    assert (reader_cfg["backend"], reader_cfg["max_source_length"], reader_cfg["num_beams"]) == ("seq2seq", 256, 1)
    pipe = json.loads((out / "pipeline" / "pipeline.json").read_text())
    assert (pipe["k"], pipe["projection"]) == (5, False)
    # answers in the official formats, reports with their keys
    preds = json.loads((out / "answers" / "xor_dev.json").read_text())
    assert sorted(preds) == ["d1", "d2", "d3"] and all(isinstance(v, str) for v in preds.values())
    assert sorted(json.loads((out / "answers" / "mkqa.json").read_text())) == ["101_fi", "101_ja", "102_fi", "102_ja"]
    xor = json.loads((out / "reports" / "xor_dev.json").read_text())
    assert xor["mode"] == "official" and set(xor["macro"]) == {"f1", "em", "bleu"}
    assert {k: v["count"] for k, v in xor["per_language"].items()} == {"fi": 2, "ja": 1}
    assert xor["missing_predictions"] == 0
    report = json.loads((out / "reports" / "mkqa.json").read_text())
    assert {k: v["count"] for k, v in report["per_locale"].items()} == {"fi": 2, "ja": 2, "macro": 4}
    assert {"em", "f1"} <= set(report["per_locale"]["macro"])
    retrieval = json.loads((out / "reports" / "xor_dev_retrieval.json").read_text())
    assert retrieval["mode"] == "fixed" and "R@2kt" in retrieval["macro"]
    results = (out / "results.md").read_text(encoding="utf-8")
    assert "| f1 | 34.7 |" in results and "| F1 ar | 42.9 |  |" in results and "| fi | 2 |" in results
    assert json.loads((out / "reproduce_config.json").read_text())["read_k"] == 5

    # A rerun finds every stage done; a changed option is refused at the first stage it changes.
    capsys.readouterr()
    assert reproduce_cora.main([*args, "--in-process"]) == 0
    assert "ran 0 stage(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="stage retrieve-xor-dev finished earlier with another command"):
        reproduce_cora.main([*args, "--read-k", "7", "--in-process"])


def test_dry_run_with_torchrun_and_index_shards(tmp_path, capsys):
    files = write_inputs(tmp_path)
    xor_mkqa = tmp_path / "mkqa-ja.jsonl"
    xor_mkqa.write_text(json.dumps({"id": "1_ja", "question": "富士山 の 高さ", "lang": "ja", "answers": ["3776"]}) + "\n")
    assert reproduce_cora.main([
        "--out", str(tmp_path / "run"), "--passages", str(files["passages"]), "--mdpr-train", str(files["mdpr"]),
        "--train-questions", str(files["train"]), "--xor-dev", str(files["dev"]), "--mkqa", str(xor_mkqa),
        "--launcher", "torchrun", "--nproc-per-node", "8", "--index-shards", "2", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    mdpr = lines[lines.index("# mdpr (to run)") + 1]
    assert mdpr.startswith("torchrun --nproc-per-node 8 -m cora train retriever --config ")
    assert "--encoder bert-base-multilingual-uncased" in mdpr
    shards = [line for line in lines if " --shard " in line]
    assert [s.split(" ")[0] for s in shards] == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]
    assert all(s.endswith(" &") for s in shards) and lines[lines.index(shards[-1]) + 1] == "wait"
    assert lines[lines.index("# index-merge (to run)") + 1].startswith("cora index merge ")
    mgen = lines[lines.index("# mgen (to run)") + 1]
    assert mgen.startswith("torchrun --nproc-per-node 8 ") and "steps.py mgen-train --data " in mgen
    assert "--model google/mt5-base" in mgen
    assert not any(line.startswith("# mkqa-convert") for line in lines)  # XOR-format MKQA is used as it is
    assert f"cora evaluate mkqa --gold {xor_mkqa} --pred" in "\n".join(lines)


def test_parallel_stages_run_as_processes_with_their_environment(tmp_path):
    cfg = reproduce_cora.ReproduceConfig(str(tmp_path / "run"), [], "", [], "")
    write = "import os, sys; open(sys.argv[1], 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])"
    stages = [reproduce_cora.Stage(f"shard-{i}", ["python", "-c", write, str(tmp_path / f"{i}.txt")],
                                   [str(tmp_path / f"{i}.txt")], atomic=False, env={"CUDA_VISIBLE_DEVICES": str(i)},
                                   parallel="g") for i in range(2)]
    stages.append(reproduce_cora.Stage("fails", ["python", "-c", "raise SystemExit(3)"], [str(tmp_path / "never")]))
    with pytest.raises(SystemExit, match="stage\\(s\\) fails failed"):
        reproduce_cora.run(cfg, stages)
    assert [(tmp_path / f"{i}.txt").read_text() for i in range(2)] == ["0", "1"]
    markers = tmp_path / "run" / "stages"
    assert sorted(p.name for p in markers.iterdir()) == ["shard-0.json", "shard-1.json"]  # not the failed one
    assert reproduce_cora.run(cfg, stages[:2]) == []  # done: skipped


def test_batched_source_loss_is_the_token_weighted_mean_of_single_losses(tmp_path):
    """mGEN trains on padded batches of CORA's source/target lines: padding must change nothing but the weighting."""
    import torch

    from cora.reader import Seq2SeqGenerator

    _, mt5 = make_tiny_models(tmp_path)
    gen = Seq2SeqGenerator.from_backbone(str(mt5), device="cpu", max_target_length=6)
    gen.model.eval()
    sources = ["<Q>: mikä on suomen pääkaupunki [fi] <P>:<0: Helsinki> helsinki on suomen pääkaupunki",
               "<Q>: 富士山 の 高さ [ja] <P>:<0: 富士山> 富士山 の 高さ は 3776 メートル で 日本 一 高い 山 です"]
    targets = ["helsinki", "3776 メートル"]
    lengths = [len(gen.tokenizer(t)["input_ids"]) for t in targets]  # target tokens with </s>
    with torch.no_grad():
        single = [gen.source_loss([s], [t]).item() for s, t in zip(sources, targets, strict=True)]
        batched = gen.source_loss(sources, targets).item()
    assert lengths == [2, 3]
    assert batched == pytest.approx(sum(x * n for x, n in zip(single, lengths, strict=True)) / sum(lengths), rel=1e-5)
