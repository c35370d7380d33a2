"""``cora iterate``: the CORA loop (cora.iterate) from a config file."""

from __future__ import annotations

import json
from pathlib import Path

from cora.errors import CoraError


def register(sub) -> None:
    p = sub.add_parser(
        "iterate", help="the CORA loop: mine cross-lingual positives/negatives, retrain mDPR and the reader",
        description=(
            "Run rounds 0..R of CORA's iterative training. Round 0 evaluates the starting retriever and reader; "
            "each later round retrieves the top-k passages for every training question with the previous "
            "round's mDPR, labels them with the previous reader (correct answer -> positive; wrong and answer "
            "absent -> hard negative; wrong but answer present -> fallback positive), expands positives to "
            "their language-linked versions (kept when they hold the answer in their language or the reader "
            "confirms them), retrains mDPR, re-indexes, retrains the reader on the new retrieval (top reader_k, "
            "up to reader_positives positives, shuffled) and evaluates both on the dev questions. Each round is "
            "a folder (round_k/) whose steps appear atomically; rerunning the same command resumes after the "
            "last finished step, and --rounds can be raised to continue a finished run. At the end a per-round "
            "table is printed and written to summary.md, summary.json and summary.png."
        ),
        epilog="Config keys (JSON): " + ", ".join(_fields()) + ". See recipes/cora_loop_xquad.py for a full run.",
    )
    p.add_argument("--config", required=True, help="JSON file with the IterateConfig fields")
    p.add_argument("--output-dir", help="override the run folder")
    p.add_argument("--rounds", type=int, help="override the number of rounds after round 0")
    p.add_argument("--device", help="torch device (default: cuda when available)")
    p.set_defaults(func=_run)


def _fields() -> list[str]:
    from dataclasses import fields

    from cora.iterate import IterateConfig

    return [f.name for f in fields(IterateConfig)]


def _run(args) -> int:
    from cora.config import config_from_dict, read_config_file
    from cora.iterate import IterateConfig, Loop

    path = Path(args.config)
    raw = read_config_file(path)
    raw.pop("type", None)
    for key in ("output_dir", "rounds", "device"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    missing = [k for k in ("output_dir", "datastore", "train_questions", "dev_questions") if k not in raw]
    if missing:
        raise CoraError(f"{path}: missing required field(s) {missing}")
    cfg = config_from_dict(IterateConfig, raw, source=str(path))
    result = Loop(cfg).run()
    print(Path(result["summary"]).read_text(encoding="utf-8"))
    print(json.dumps(result, indent=2))
    return 0
