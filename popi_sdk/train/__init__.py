"""POPI training (paper §4): stage 1 trains the summarizer with GRPO, stage 2 the generator with
DPO. ``config`` is light (pydantic + YAML); the stages import torch and TRL only when run."""

from popi_sdk.train.config import TrainConfig, load_config, presets

__all__ = ["TrainConfig", "load_config", "presets"]
