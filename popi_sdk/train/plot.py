"""The run's picture (paper Fig. 4): stage-1 mean reward per step with its spread over the sampled
summaries, and stage-2 DPO reward margins. Drawn with matplotlib's Agg backend (no display)."""

from __future__ import annotations

import os
from pathlib import Path

from popi_sdk.train.common import read_metrics


def plot_run(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    """Write RUN/rewards.png from RUN/metrics.jsonl; returns the path (None when nothing logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    stage1 = [r for r in read_metrics(run, "stage1") if "reward" in r]
    stage2 = [r for r in read_metrics(run, "stage2") if "rewards/margins" in r]
    if not stage1 and not stage2:
        return None
    panels = [p for p in (stage1, stage2) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    ax_iter = iter(axes[0])
    if stage1:
        ax = next(ax_iter)
        steps = [r["step"] for r in stage1]
        mean = [r["reward"] for r in stage1]
        std = [r.get("reward_std", 0.0) or 0.0 for r in stage1]
        ax.plot(steps, mean, marker="o", label="mean reward")
        ax.fill_between(
            steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
            alpha=0.25, label="± std over sampled summaries",
        )
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("reward = −(summary-augmented loss)")
        ax.set_title("Stage 1: summarizer")
        ax.legend()
    if stage2:
        ax = next(ax_iter)
        steps = [r["step"] for r in stage2]
        ax.plot(steps, [r["rewards/margins"] for r in stage2], marker="o", label="reward margin")
        if all("rewards/accuracies" in r for r in stage2):
            ax2 = ax.twinx()
            ax2.plot(steps, [r["rewards/accuracies"] for r in stage2], color="tab:green",
                     linestyle="--", label="accuracy")
            ax2.set_ylabel("reward accuracy")
            ax2.set_ylim(-0.05, 1.05)
        ax.set_xlabel("DPO step")
        ax.set_ylabel("β·(chosen − rejected log-ratio)")
        ax.set_title("Stage 2: generator")
        ax.legend(loc="upper left")
    fig.tight_layout()
    dest = Path(out) if out else run / "rewards.png"
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest
