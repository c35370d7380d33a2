"""Per-language tables, JSON reports and bar charts."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path


def f1_em_table(scores: Mapping[str, Sequence[tuple[float, float]]], langs: Iterable[str] | None = None,
                counts: bool = True) -> dict[str, dict[str, float]]:
    """{lang: [(f1, em), ...] in [0, 1]} -> {lang: {"F1", "EM" in %, "n"}, ..., "macro": {"F1", "EM"}}.

    Languages in ``langs`` order (default: sorted), those without scores left out; the macro row is the mean over
    the languages shown. ``counts=False`` leaves out "n"."""
    order = [lang for lang in (langs if langs is not None else sorted(scores)) if scores.get(lang)]
    table: dict[str, dict[str, float]] = {}
    for lang in order:
        v = scores[lang]
        table[lang] = {"F1": 100 * sum(f for f, _ in v) / len(v), "EM": 100 * sum(e for _, e in v) / len(v)}
        if counts:
            table[lang]["n"] = len(v)
    if table:
        table["macro"] = {m: sum(table[lang][m] for lang in order) / len(order) for m in ("F1", "EM")}
    return table


def format_table(table: dict[str, dict[str, float]], metrics: list[str] | None = None, digits: int = 1) -> str:
    """A Markdown table with one row per language ('macro' last) and one column per metric."""
    langs = [k for k in table if k != "macro"] + (["macro"] if "macro" in table else [])
    metrics = metrics or [m for m in next(iter(table.values()), {}) if m not in ("missing",)]
    head = "| lang | " + " | ".join(metrics) + " |"
    rows = [head, "|---|" + "---:|" * len(metrics)]
    for lang in langs:
        cells = []
        for m in metrics:
            v = table[lang].get(m, "")
            cells.append(f"{v:.{digits}f}" if isinstance(v, float) else str(v))
        rows.append(f"| {lang} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_per_language(table: dict[str, dict[str, float]], metrics: list[str], path: str | os.PathLike,
                      title: str = "") -> Path:
    """Grouped bar chart: one group per language, one bar per metric (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    langs = [k for k in table if k != "macro"] + (["macro"] if "macro" in table else [])
    x = np.arange(len(langs))
    width = 0.8 / max(1, len(metrics))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(langs) * max(1, len(metrics))), 4))
    for i, m in enumerate(metrics):
        ax.bar(x + i * width, [table[lang].get(m, 0.0) for lang in langs], width, label=m)
    ax.set_xticks(x + width * (len(metrics) - 1) / 2, langs)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
