"""fp32 vs bf16 autocast on this machine, side by side in one run, and what bf16 costs in quality.

encode : me5-small Encoder.encode of real w100 passages (XQuAD paragraphs cut to 100 words): passages/s; cosine of
         every bf16 embedding to its fp32 one (mean, min); recall@1/5 of XQuAD dev questions (6 languages) against
         the English paragraphs, index and questions encoded in the same precision
train  : reader training steps on real mixture examples (batch 16, 256 tokens, AdamW, fp32 master weights):
         examples/s with the top 4 / 8 / 12 encoder layers trained
answer : the shipped reader over the XQuAD all-languages store (k passages, reread projection): questions/s for
         Pipeline.answer one question at a time and for answer_batch; macro F1 of both precisions on the same
         questions; and the reader's gold-paragraph F1 on XQuAD dev in both precisions

Each fp32/bf16 pair runs back to back on the same inputs. Load on the machine is recorded (machine.loadavg_1m).

    python benchmarks/precision.py [--out results/precision.json] [--questions 240] [--k 10]
    python benchmarks/precision.py --quick        # tiny random models, synthetic text, < 1 minute
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, machine, print_table, synthetic_texts, tiny_encoder_dir, write_results, xquad_w100  # noqa: E402

from cora.datasets import XQUAD_DEV_ARTICLES, xquad_file  # noqa: E402
from cora.encoder import Encoder  # noqa: E402
from cora.precision import autocast, cpu_supports_bf16  # noqa: E402
from cora.reader import ExtractiveReader  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def bench_encode(encoder_name: str, texts: list[str], quick: bool) -> tuple[list[dict], dict]:
    rows, vectors = [], {}
    for prec in PRECISIONS:
        enc = Encoder.from_pretrained(encoder_name, device="cpu", precision=prec)
        enc.encode(texts[:8], "passage")  # warm-up
        t0 = time.perf_counter()
        vectors[prec] = enc.encode(texts, "passage", batch_size=32)
        dt = time.perf_counter() - t0
        rows.append({"part": "encode", "precision": prec, "items": len(texts), "per_s": len(texts) / dt})
    a, b = vectors["fp32"], vectors["bf16"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return rows, {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def xquad_recall(encoder_name: str) -> dict:
    """recall@1/5 of XQuAD dev questions (6 languages) against the 200 English paragraphs, per precision."""
    from cora.datastore import read_squad
    from cora.questions import read_squad_questions

    paragraphs = [p for _, p in read_squad(xquad_file(SHARED, "en"), "en", keep_titles=False)]
    groups = np.array([p.group for p in paragraphs])
    questions = [q for lang in ("ar", "de", "en", "hi", "ru", "zh")
                 for q in read_squad_questions(xquad_file(SHARED, lang), lang, XQUAD_DEV_ARTICLES)]
    out = {}
    for prec in PRECISIONS:
        enc = Encoder.from_pretrained(encoder_name, device="cpu", precision=prec)
        P = enc.encode_passages([""] * len(paragraphs), [p.text for p in paragraphs])
        Q = enc.encode_queries([q.question for q in questions])
        top = np.argsort(-(Q @ P.T), axis=1)[:, :5]
        hit = groups[top] == np.array([q.gold_group for q in questions])[:, None]
        out[prec] = {"R@1": 100 * float(hit[:, 0].mean()), "R@5": 100 * float(hit.any(1).mean()),
                     "questions": len(questions)}
    return out


def bench_train(make_reader, examples, negatives, layer_counts, steps: int) -> list[dict]:
    from cora.reader.training import ReaderTask

    rows = []
    for layers in layer_counts:
        for prec in PRECISIONS:
            torch.manual_seed(0)
            reader = make_reader(layers)
            task = ReaderTask(reader, examples, 16, negatives, 0.0, None)
            params = [p for p in reader.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-5)
            batches = list(task.batches(0, random.Random(0)))[: steps + 1]
            n, t0 = 0, None
            for i, batch in enumerate(batches):
                if i == 1:  # the first step (allocation, oneDNN kernel choice) is not timed
                    n, t0 = 0, time.perf_counter()
                with autocast(prec, "cpu"):
                    loss = task.loss(batch)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                n += len(batch)
            rows.append({"part": f"train top {layers} layers", "precision": prec, "items": n,
                         "per_s": n / (time.perf_counter() - t0)})
    return rows


def bench_answer_reader(reader, questions, passages, langs) -> list[dict]:
    """Quick mode: the reader alone, one question at a time vs read_batch."""
    rows = []
    for prec in PRECISIONS:
        reader.precision = prec
        for path, fn in (("one at a time", lambda: [reader.read(q, p, g) for q, p, g in zip(questions, passages, langs,
                                                                                          strict=True)]),
                         ("batched", lambda: reader.read_batch(questions, passages, langs))):
            t0 = time.perf_counter()
            fn()
            rows.append({"part": f"answer ({path})", "precision": prec, "items": len(questions),
                         "per_s": len(questions) / (time.perf_counter() - t0)})
    return rows


def bench_answer_pipeline(n_questions: int, k: int, retrieval: Path) -> tuple[list[dict], dict]:
    from cora.datastore import Datastore
    from cora.evaluation.xor import score_one
    from cora.pipeline import Pipeline, PipelineConfig
    from cora.reader import load_reader
    from cora.reader.training import score_gold_paragraph, xquad_dev_examples
    from cora.retriever import Retriever

    store = Datastore(retrieval / "datastore-all-languages")
    dev = xquad_dev_examples(SHARED, max(1, n_questions // 12), seed=1)
    rows, quality = [], {}
    for prec in PRECISIONS:
        retriever = Retriever.from_pretrained(retrieval / "index-all-languages", store,
                                              query_encoder="mdpr-me5-small", precision=prec)
        reader = load_reader("me5-small-reader", precision=prec)
        pipe = Pipeline(retriever, reader, PipelineConfig(str(retrieval / "index-all-languages"), "me5-small-reader",
                                                          k=k))
        pipe.answer(dev[0].question, dev[0].question_lang)  # warm-up
        f1 = {}
        for path in ("one at a time", "batched"):
            t0 = time.perf_counter()
            if path == "batched":
                answers = []
                for i in range(0, len(dev), 32):
                    chunk = dev[i : i + 32]
                    answers += pipe.answer_batch([e.question for e in chunk], [e.question_lang for e in chunk])
            else:
                answers, times = [], []
                for e in dev:
                    t1 = time.perf_counter()
                    answers.append(pipe.answer(e.question, e.question_lang))
                    times.append(time.perf_counter() - t1)
                quality[f"Pipeline.answer p50 ms ({prec})"] = 1000 * statistics.median(times)
            dt = time.perf_counter() - t0
            rows.append({"part": f"answer k={k} ({path})", "precision": prec, "items": len(dev),
                         "per_s": len(dev) / dt})
            per: dict[str, list[float]] = {}
            for e, a in zip(dev, answers, strict=True):
                per.setdefault(e.answer_lang, []).append(score_one(a.text, e.answers, e.answer_lang, "fixed")[0])
            f1[path] = 100 * statistics.fmean(statistics.fmean(v) for v in per.values())
        quality[f"answer macro F1 ({prec})"] = f1
        gold = score_gold_paragraph(reader, xquad_dev_examples(SHARED, 20))
        quality[f"gold-paragraph macro F1, 240 questions ({prec})"] = gold["macro"]["F1"]
    return rows, quality


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random models and synthetic text (< 1 minute)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--passages", type=int, default=400, help="passages encoded per precision")
    ap.add_argument("--questions", type=int, default=240, help="XQuAD dev questions answered per precision")
    ap.add_argument("--k", type=int, default=10, help="passages read per question")
    ap.add_argument("--train-steps", type=int, default=6, help="timed training steps per configuration")
    ap.add_argument("--retrieval", default="runs/xquad-retrieval", help="recipes/xquad_retrieval.py output")
    args = ap.parse_args(argv)
    results = {"machine": machine(), "cpu_bf16": cpu_supports_bf16(), "rows": []}
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            enc_dir = str(tiny_encoder_dir(Path(tmp) / "enc"))
            texts = synthetic_texts(64, words=60)
            rows, cos = bench_encode(enc_dir, texts, True)
            results["rows"] += rows
            results["quality"] = cos
            from cora.datastore import Passage
            from cora.reader.data import ReaderExample

            passages = [Passage(f"p{i}", "en", "", t, f"g{i}") for i, t in enumerate(texts)]
            examples = [ReaderExample(f"q{i}", " ".join(p.text.split()[:5]), "en", [p], [p.text.split()[7]], "en")
                        for i, p in enumerate(passages)]
            results["rows"] += bench_train(
                lambda n: ExtractiveReader.from_backbone(enc_dir, device="cpu", trainable_layers=n, max_length=128),
                examples, {}, (1, 2), steps=2)
            reader = ExtractiveReader.from_backbone(enc_dir, device="cpu", max_length=128)
            qs = [e.question for e in examples[:16]]
            results["rows"] += bench_answer_reader(reader, qs, [passages[i : i + 4] for i in range(16)], ["en"] * 16)
    else:
        texts = xquad_w100(limit=args.passages)
        rows, cos = bench_encode("me5-small", texts, False)
        results["rows"] += rows
        results["quality"] = {**cos, "xquad_recall": xquad_recall("me5-small")}
        from cora.reader.training import reader_mixture

        mix = reader_mixture(SHARED, cross_lingual=0)
        examples = random.Random(0).sample(mix.train, 16 * (args.train_steps + 1))
        results["rows"] += bench_train(
            lambda n: ExtractiveReader.from_backbone("me5-small", device="cpu", trainable_layers=n, max_length=256),
            examples, mix.negatives, (4, 8, 12), args.train_steps)
        rows, quality = bench_answer_pipeline(args.questions, args.k, Path(args.retrieval))
        results["rows"] += rows
        results["quality"].update(quality)
    by = {(r["part"], r["precision"]): r["per_s"] for r in results["rows"]}
    table = [{"part": part, "fp32 /s": by[(part, "fp32")], "bf16 /s": by[(part, "bf16")],
              "bf16 / fp32": by[(part, "bf16")] / by[(part, "fp32")]}
             for part in dict.fromkeys(r["part"] for r in results["rows"])]
    print_table(table, ["part", "fp32 /s", "bf16 /s", "bf16 / fp32"])
    print(results["quality"])
    results["table"] = table
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
