"""Train a latent-embedding baseline (LoRe, PAL-A or PAL-B; :mod:`popi_sdk.train.latent_model`):
each training user's embedding and the generator, jointly, on the training users' preferences.

The loss is stage 2's summary-augmented DPO loss (:func:`popi_sdk.objective.popi_loss`) with the
user's vector in the one-token slot where a summary would be text; the reference log-probs are
the initial generator's on the prompt alone, computed once before training
(:class:`~popi_sdk.scoring.ReferenceCache`), as in stage 2. Every preference pair a training
user has (signal pairs and examples) trains their embedding. Writes ``RUN/<method>/``: the
generator, the encoder (``latent.pt``), ``popi_latent.json`` and ``metrics.jsonl``, which
``popi eval --methods lore,pal-a,pal-b --latent RUN`` reads.

Local::

    popi train latent --method lore --preset cpu-small --data data/review --out runs/latent

A plain PyTorch loop on one device (the encoder's input slot does not fit TRL's DPOTrainer, which
takes token ids); on a GPU pass ``--set device=cuda``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from popi_sdk.errors import ConfigError
from popi_sdk.train.config import run_folder, training_file

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "presets" / "latent"


class LatentConfig(BaseModel):
    """One latent-baseline training run. Defaults are GPU-sized; ``--preset cpu-small`` is not."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    method: Literal["lore", "pal-a", "pal-b"] = Field(
        default="lore", description="lore (low-rank basis), pal-a (prototype ideal points) or "
        "pal-b (prototype functions of the prompt)."
    )
    model: str = Field(default="smollm2", description="The generator to train (hub id, folder, or 'smollm2').")
    data: str | None = Field(default=None, description="Folder holding train.jsonl.")
    out: str | None = Field(default=None, description="Run folder; the checkpoint goes to RUN/<method>.")
    rank: int = Field(default=4, ge=1, description="K: basis vectors (LoRe) or prototypes (PAL).")
    beta: float = Field(default=0.01, gt=0, description="β of the DPO loss (the paper's best).")
    loss_type: Literal["dpo", "ipo"] = Field(default="dpo", description="dpo or ipo.")
    learning_rate: float = Field(default=1e-6, gt=0, description="Generator learning rate (paper's).")
    embedding_learning_rate: float = Field(
        default=1e-2, gt=0, description="Learning rate of the user weights and the encoder."
    )
    train_generator: bool = Field(
        default=True, description="Train the generator jointly (false: embeddings only, generator frozen)."
    )
    batch_size: int = Field(default=8, ge=1, description="Preference pairs per optimizer step.")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training pairs.")
    max_steps: int = Field(default=-1, description="Optimizer steps; -1 means use epochs.")
    max_length: int | None = Field(
        default=1024, ge=8, description="Skip pairs whose context + response is longer (None: keep all)."
    )
    infer_steps: int = Field(
        default=50, ge=0, description="Adam steps fitting a held-out user's weights at evaluation."
    )
    infer_learning_rate: float = Field(default=0.1, gt=0, description="Their learning rate.")
    score_batch_size: int = Field(default=8, ge=1, description="Sequences per forward pass.")
    device: str | None = Field(default=None, description="cpu, cuda, ...; default: cuda when available.")
    logging_steps: int = Field(default=1, ge=1, description="Log metrics every N steps.")
    seed: int = Field(default=0, description="Random seed (initialization and batch order).")

    @model_validator(mode="after")
    def _check(self) -> "LatentConfig":
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps must be a positive step count or -1 (use epochs)")
        return self

    def run_dir(self) -> Path:
        return run_folder(self.out)

    def folder(self) -> Path:
        return self.run_dir() / self.method

    def train_file(self) -> Path:
        return training_file(self.data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_latent_config(
    config: str | Path | None = None, *, preset: str | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (), method: str | None = None,
    max_steps: int | None = None, data: str | Path | None = None, out: str | Path | None = None,
) -> LatentConfig:
    """A preset or YAML file (not both), then ``key=value`` overrides, then the explicit arguments."""
    from popi_sdk.train.config import _read_yaml, parse_override

    if config is not None and preset is not None:
        raise ConfigError("give either --config FILE or --preset NAME, not both")
    values: dict[str, Any] = {}
    if preset is not None:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown latent preset {preset!r}; known: {', '.join(presets())}")
        values = _read_yaml(path)
    elif config is not None:
        values = _read_yaml(Path(config))
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    values.update(dict(items))
    for key, value in (("method", method), ("max_steps", max_steps), ("data", data), ("out", out)):
        if value is not None:
            values[key] = str(value) if isinstance(value, Path) else value
    try:
        return LatentConfig.model_validate(values)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(config)"
            if err["type"] == "extra_forbidden":
                lines.append(f"field {where}: unknown field; known: {', '.join(LatentConfig.model_fields)}")
            else:
                lines.append(f"field {where}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
        raise ConfigError("invalid latent training config:\n  " + "\n  ".join(lines)) from None


def _rows(users, codec, ref, max_length):
    """(user index, chosen item, rejected item, ref chosen, ref rejected) per training pair."""
    pairs = [(u, p) for u, user in enumerate(users) for p in [*user.signals.pairs, *user.examples]]
    if not pairs:
        raise ConfigError("no preference pairs: rows of train.jsonl need signal pairs or examples")
    ref_c, ref_r = ref.pairs([p for _, p in pairs])
    rows = []
    for (u, p), rc, rr in zip(pairs, ref_c.tolist(), ref_r.tolist()):
        chosen, rejected = codec.items(p.prompt, [p.chosen, p.rejected])
        longest = len(chosen.context) + max(len(chosen.response), len(rejected.response))
        if max_length is not None and longest > max_length:
            continue
        rows.append((u, chosen, rejected, rc, rr))
    if not rows:
        raise ConfigError(f"every pair is longer than max_length={max_length}; raise it")
    return rows


def main(cfg: LatentConfig) -> str:
    """Train ``cfg.method``; returns the checkpoint folder ``RUN/<method>``."""
    import torch

    from popi_sdk.backends.hf import resolve_model
    from popi_sdk.data import read_users
    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.train import latent_model as L
    from popi_sdk.train.common import load_policy, load_tokenizer

    folder = cfg.folder()
    if (folder / L.META_FILE).exists():
        log.info("%s already holds a trained %s; skipping (give another --out to retrain)", folder, cfg.method)
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    users = read_users(cfg.train_file())
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path, model = load_policy(cfg.model)
    model.to(device)
    tokenizer = load_tokenizer(path)
    codec = L.Codec(tokenizer)
    # log πref(y|x) of the initial generator, once, before any weight moves.
    model.eval()
    scorer = SequenceScorer(model, tokenizer, batch_size=cfg.score_batch_size)
    rows = _rows(users, codec, ReferenceCache(scorer, path), cfg.max_length)
    del scorer
    scale = float(model.get_input_embeddings().weight.detach().float().std())
    encoder = L.make_encoder(cfg.method, model.config.hidden_size, cfg.rank, len(users), scale, cfg.seed)
    encoder.to(device)
    model.requires_grad_(cfg.train_generator)
    model.train()
    groups = [{"params": list(encoder.parameters()), "lr": cfg.embedding_learning_rate}]
    if cfg.train_generator:
        groups.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.learning_rate})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    per_epoch = max(1, -(-len(rows) // cfg.batch_size))
    steps = cfg.max_steps if cfg.max_steps > 0 else max(1, round(cfg.epochs * per_epoch))
    log.info("%s: %d users, %d pairs, %d steps of %d pairs", cfg.method, len(users), len(rows), steps, cfg.batch_size)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    initial = encoder.weights.detach().clone()
    metrics = folder / "metrics.jsonl"
    metrics.write_text("", encoding="utf-8")
    started = time.perf_counter()
    for step in range(1, steps + 1):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        batch = [rows[i] for i in order[: cfg.batch_size]]
        del order[: cfg.batch_size]
        users_idx = torch.tensor([r[0] for r in batch], device=device)
        opt.zero_grad()
        losses = L.pair_loss(
            model, encoder, encoder.weights[users_idx], [r[1] for r in batch], [r[2] for r in batch],
            torch.tensor([r[3] for r in batch], device=device), torch.tensor([r[4] for r in batch], device=device),
            beta=cfg.beta, loss_type=cfg.loss_type, pad_id=codec.slot_id,
        )
        loss = losses.mean()
        loss.backward()
        opt.step()
        if step % cfg.logging_steps == 0 or step == steps:
            moved = float((encoder.weights.detach().cpu() - initial.cpu()).norm())
            rec = {"stage": cfg.method, "step": step, "loss": loss.item(), "weights_moved": moved,
                   "seconds": round(time.perf_counter() - started, 1)}
            with metrics.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            log.info("step %d/%d loss %.4f", step, steps, rec["loss"])
    model.eval()
    meta = {
        "base_model": path, "train_users": [u.user_id for u in users], "scale": scale,
        "beta": cfg.beta, "loss_type": cfg.loss_type, "infer_steps": cfg.infer_steps,
        "infer_learning_rate": cfg.infer_learning_rate, "steps": steps,
        "train_generator": cfg.train_generator, "base_model_name": resolve_model(cfg.model),
    }
    L.save(folder, model, tokenizer, encoder, meta)
    return str(folder)
