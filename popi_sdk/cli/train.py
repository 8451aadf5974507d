"""``popi train``: stage 1 (GRPO summarizer), stage 2 (DPO generator), or both."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Train POPI: stage1 (summarizer, GRPO), stage2 (generator, DPO), or all; latent: the "
    "LoRe / PAL baselines.",
    no_args_is_help=True,
)

_CONFIG = typer.Option(None, "--config", "-c", help="YAML config file (see docs/training.md).")
_PRESET = typer.Option(None, "--preset", "-p", help="Shipped preset: cpu-small, cpu-learn or paper.")
_DATA = typer.Option(None, "--data", help="Folder holding train.jsonl (canonical user rows).")
_OUT = typer.Option(None, "--out", "-o", help="Run folder: checkpoints, metrics, plot, config.")
_MAX_STEPS = typer.Option(None, "--max-steps", min=1, help="Cap the steps of each stage.")
_SET = typer.Option(
    None, "--set", help="Override a field: --set stage1.learning_rate=1e-5 (repeatable)."
)


def _config(config, preset, data, out, max_steps, overrides):
    from popi_sdk.train.config import load_config

    if config is None and preset is None:
        preset = "cpu-small"
        typer.echo("No --config or --preset given: using the cpu-small preset.", err=True)
    cfg = load_config(config, preset=preset, overrides=overrides or [], max_steps=max_steps,
                      data=data, out=out)
    cfg.train_file()  # fail now, before any model loads, when the data is missing
    cfg.run_dir()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return cfg


@app.command()
def stage1(
    config: Optional[Path] = _CONFIG, preset: Optional[str] = _PRESET,
    data: Optional[Path] = _DATA, out: Optional[Path] = _OUT,
    max_steps: Optional[int] = _MAX_STEPS, set_: Optional[list[str]] = _SET,
) -> None:
    """Train the summarizer with GRPO; writes RUN/stage1."""
    from popi_sdk.train import stage1 as stage

    cfg = _config(config, preset, data, out, max_steps, set_)
    typer.echo(f"Stage 1 checkpoint: {stage.main(cfg)}")


@app.command()
def stage2(
    config: Optional[Path] = _CONFIG, preset: Optional[str] = _PRESET,
    data: Optional[Path] = _DATA, out: Optional[Path] = _OUT,
    max_steps: Optional[int] = _MAX_STEPS, set_: Optional[list[str]] = _SET,
) -> None:
    """Train the generator with DPO on prompt + stage-1 summary; writes RUN/stage2."""
    from popi_sdk.train import stage2 as stage

    cfg = _config(config, preset, data, out, max_steps, set_)
    typer.echo(f"Stage 2 checkpoint: {stage.main(cfg)}")


@app.command("all")
def all_(
    config: Optional[Path] = _CONFIG, preset: Optional[str] = _PRESET,
    data: Optional[Path] = _DATA, out: Optional[Path] = _OUT,
    max_steps: Optional[int] = _MAX_STEPS, set_: Optional[list[str]] = _SET,
    rounds: int = typer.Option(
        1, "--rounds", min=1,
        help="Alternate the stages: round r > 1 trains stage 1 against round r-1's stage-2 "
        "generator, then stage 2 again (RUN/round-r/).",
    ),
) -> None:
    """Both stages, one after the other (a finished stage is skipped when resuming)."""
    from popi_sdk.train.rounds import train_rounds

    cfg = _config(config, preset, data, out, max_steps, set_)
    done = train_rounds(cfg, rounds)
    for r, (a, b) in enumerate(done, start=1):
        if len(done) > 1:
            typer.echo(f"Round {r}:")
        typer.echo(f"Stage 1 checkpoint: {a}\nStage 2 checkpoint: {b}")
    s1, s2 = done[-1]
    typer.echo(f'Load them with Personalizer(summarizer="{s1}", generator="{s2}")')


@app.command()
def latent(
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="lore, pal-a or pal-b (default: the config's, else lore)."
    ),
    config: Optional[Path] = _CONFIG,
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Shipped latent preset: cpu-small."),
    data: Optional[Path] = _DATA, out: Optional[Path] = _OUT,
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Cap the optimizer steps."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a field: --set rank=8 (repeatable; see popi_sdk/train/latent.py)."
    ),
) -> None:
    """Train a latent-embedding baseline (LoRe, PAL-A, PAL-B); writes RUN/<method>."""
    from popi_sdk.train.latent import load_latent_config, main

    cfg = load_latent_config(config, preset=preset, overrides=set_ or [], method=method,
                             max_steps=max_steps, data=data, out=out)
    cfg.train_file()  # fail now, before any model loads, when the data is missing
    cfg.run_dir()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = main(cfg)
    typer.echo(f"{cfg.method} checkpoint: {folder}\nEvaluate it with popi eval --methods {cfg.method} "
               f"--latent {cfg.run_dir()} --data TEST.jsonl --out DIR")


@app.command()
def show(
    config: Optional[Path] = _CONFIG, preset: Optional[str] = _PRESET,
    max_steps: Optional[int] = _MAX_STEPS, set_: Optional[list[str]] = _SET,
) -> None:
    """Print the resolved config (checked, nothing trained)."""
    from popi_sdk.train.config import load_config

    cfg = load_config(config, preset=preset, overrides=set_ or [], max_steps=max_steps)
    typer.echo(cfg.to_yaml(), nl=False)


@app.command()
def plot(run: Path = typer.Argument(..., help="Run folder holding metrics.jsonl.")) -> None:
    """Redraw RUN/rewards.png from RUN/metrics.jsonl."""
    from popi_sdk.train.plot import plot_run

    dest = plot_run(run)
    typer.echo(f"Wrote {dest}" if dest else f"{run}/metrics.jsonl has no logged steps yet")
