"""The evaluation's picture, like the paper's figures: reward accuracy and win rate per method,
with one standard error as error bars and the base model's 50% as a dashed line. Written beside
``results.md`` as ``results.png`` (matplotlib's Agg backend, no display)."""

from __future__ import annotations

import os
from pathlib import Path


def plot_results(results: dict, dest: str | os.PathLike) -> Path | None:
    """Draw ``results["methods"]`` into ``dest``; None when no method has either metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in results["methods"].values()
               if m.get("reward_accuracy") is not None or m.get("win_rate") is not None]
    if not methods:
        return None
    metrics = [("reward_accuracy", "Reward accuracy"), ("win_rate", "Win rate vs base")]
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(methods) + 2), 4))
    for k, (key, label) in enumerate(metrics):
        xs = [i + (k - 0.5) * width for i in range(len(methods))]
        values = [100 * (m.get(key) or 0.0) for m in methods]
        errors = [100 * (m.get(f"{key}_se") or 0.0) for m in methods]
        bars = ax.bar(xs, values, width, yerr=errors, capsize=4, label=label)
        for bar, m in zip(bars, methods):
            if m.get(key) is None:  # not measured for this method: no bar, say so
                bar.set_height(0)
                ax.annotate("n/a", (bar.get_x() + bar.get_width() / 2, 1), ha="center", fontsize=8)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="base model (50%)")
    ax.set_xticks(range(len(methods)), [m["title"] for m in methods], rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title("Personalization methods against the base model (± 1 s.e.)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    dest = Path(dest)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest
