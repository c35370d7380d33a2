"""Per-language tables, JSON reports and bar charts."""

from __future__ import annotations

import os
from pathlib import Path


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
