"""The run's picture (paper Fig. 4): stage-1 mean reward per step with its spread over the sampled
summaries, the validation users' reward and reward accuracy (greedy summaries, when the run holds
validation users out), and stage-2 DPO reward margins. Drawn with matplotlib's Agg backend (no display)."""

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
    val = [r for r in read_metrics(run, "stage1") if r.get("kind") == "validation"]
    stage2 = [r for r in read_metrics(run, "stage2") if "rewards/margins" in r]
    if not stage1 and not stage2 and not val:
        return None
    panels = [p for p in (stage1, val, stage2) if p]
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
    if val:
        ax = next(ax_iter)
        _validation_panel(ax, val)
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


def _validation_panel(ax, val: list[dict]) -> None:
    """Validation reward (left) and reward accuracy (right) with ± one standard error; the
    points before GRPO (initial, after the warm start) are marked apart."""
    # A step's position on the x axis: the warm start sits half a step before GRPO step 1.
    xs = [0.5 if r.get("phase") == "warm_start" else r["step"] for r in val]
    ax.errorbar(xs, [r["val_reward"] for r in val], yerr=[r.get("val_reward_se") or 0 for r in val],
                marker="o", capsize=3, label="validation reward")
    for r, x in zip(val, xs):
        if r.get("phase") in ("initial", "warm_start"):
            ax.annotate(r["phase"].replace("_", " "), (x, r["val_reward"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 6))
    ax.set_xlabel("GRPO step (0.5: after the warm start)")
    ax.set_ylabel("mean reward of greedy summaries")
    ax.set_title(f"Stage 1: {val[-1].get('val_users', '?')} validation users")
    ax2 = ax.twinx()
    ax2.errorbar(xs, [100 * r["val_accuracy"] for r in val],
                 yerr=[100 * (r.get("val_accuracy_se") or 0) for r in val], color="tab:green",
                 linestyle="--", marker="s", capsize=3, label="reward accuracy %")
    ax2.set_ylabel("reward accuracy % (vs prompt only)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right")
