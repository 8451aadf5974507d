"""POPI in rounds: stage 1, stage 2, then stage 1 again against the stage-2 generator.

A frozen generator that barely reads descriptions gives stage 1 little to learn from (the
headroom measurements in docs/results.md). Stage 2 teaches the generator to use summaries; a
second stage 1 rewarded by *that* generator can then learn summaries it reads, and so on:

    round 1:  RUN/stage1          (base summarizer vs base generator)
              RUN/stage2          (base generator trained on round-1 summaries)
    round r:  RUN/round-r/stage1  (round r-1 summarizer vs round r-1 generator, frozen)
              RUN/round-r/stage2  (round r-1 generator trained on round-r summaries)

Every round uses the same config, data and validation users; a finished round is skipped when
resuming, like a finished stage.

    popi train all --preset cpu-small --data DIR --out RUN --rounds 2
"""

from __future__ import annotations

import logging
from pathlib import Path

from popi_sdk.errors import ConfigError
from popi_sdk.train.config import TrainConfig

log = logging.getLogger(__name__)


def round_config(cfg: TrainConfig, r: int, summarizer: str, generator: str) -> TrainConfig:
    """The config of round ``r`` (2, 3, ...): its own run folder, starting from the previous
    round's checkpoints."""
    out = Path(cfg.run_dir()) / f"round-{r}"
    stage2 = cfg.stage2.model_copy(update={"summarizer": None})  # this round's stage-1 model
    return cfg.model_copy(update={"out": str(out), "model": summarizer, "generator": generator,
                                  "stage2": stage2})


def train_rounds(cfg: TrainConfig, rounds: int) -> list[tuple[str, str]]:
    """Train ``rounds`` rounds of both stages; returns each round's (stage 1, stage 2) folders."""
    from popi_sdk.train import stage1, stage2

    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}")
    if rounds > 1 and cfg.stage2.summarizer is not None:
        raise ConfigError(
            "stage2.summarizer is set, so stage 2 would not train on this run's summaries: "
            "rounds need it unset (null)"
        )
    done = [(stage1.main(cfg), stage2.main(cfg))]
    for r in range(2, rounds + 1):
        log.info("round %d of %d: stage 1 against the round-%d generator", r, rounds, r - 1)
        sub = round_config(cfg, r, *done[-1])
        done.append((stage1.main(sub), stage2.main(sub)))
    return done
