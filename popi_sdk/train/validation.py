"""Stage 1's learning curve: a fixed set of validation users held out of the training file.

Before training (and after a best-of-N warm start, when there is one), then every
``stage1.eval_every`` GRPO steps and at the last, the current summarizer writes a *greedy* summary
for each validation user (as the SDK would at inference), and the frozen generator scores it on
that user's examples: the mean POPI reward (the training objective, −loss) and the reward
accuracy (``popi eval``'s definition: the margin under the summary beats the prompt-only margin).
Both go to ``RUN/metrics.jsonl`` as ``{"stage": "stage1", "kind": "validation", "phase": ...}`` lines
and the summaries to ``RUN/validation/step-NNNNN.jsonl`` (``warm-start.jsonl`` after the warm start), so a run shows whether the summarizer
learned something that carries to users it never trained on. Settings are chosen on these users;
the test users stay untouched until the final evaluation.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from popi_sdk.backends.base import Message
from popi_sdk.errors import ConfigError
from popi_sdk.eval import metrics as M
from popi_sdk.objective import popi_reward
from popi_sdk.scoring import summary_logprobs
from popi_sdk.signals import UserRow

log = logging.getLogger(__name__)


def split_validation(
    users: Sequence[UserRow], n: int, *, seed: int
) -> tuple[list[UserRow], list[UserRow]]:
    """``(train, validation)``: ``n`` users with examples drawn with ``seed``, the rest train.
    The draw depends only on the file and the seed, so every run of a config validates on the
    same users."""
    if n <= 0:
        return list(users), []
    labeled = [i for i, u in enumerate(users) if u.examples]
    if n >= len(labeled):
        raise ConfigError(
            f"stage1.validation_users = {n}, but the training file has only {len(labeled)} users "
            "with examples: hold out fewer (at most half is sensible) or add users"
        )
    held = set(random.Random(seed).sample(labeled, n))
    return [u for i, u in enumerate(users) if i not in held], [users[i] for i in sorted(held)]


def write_summaries(
    model: Any,
    tokenizer: Any,
    messages: Sequence[list[Message]],
    *,
    max_tokens: int,
    clean: Callable[[str], str],
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    progress: str | None = None,
) -> list[str]:
    """The policy's summaries of ``messages`` (greedy at ``temperature`` 0), cleaned, in order:
    the roll-out GRPO samples, outside the trainer (validation, best-of-N warm start).
    ``progress`` names a progress bar counting the summaries (none without it)."""
    import torch

    from popi_sdk.progress import progress_bar

    was_training, side = model.training, tokenizer.padding_side
    model.eval()  # no dropout; and training-mode checkpointing turns the KV cache off
    tokenizer.padding_side = "left"
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    out: list[str] = []
    try:
        with progress_bar(progress or "", len(prompts), enabled=progress is not None,
                          unit="summaries") as advance:
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt",
                                padding=True, add_special_tokens=False).to(model.device)
                with torch.no_grad():
                    gen = model.generate(**enc, max_new_tokens=max_tokens,
                                         pad_token_id=tokenizer.pad_token_id, **sampling)
                for row in gen[:, enc["input_ids"].shape[1]:]:
                    out.append(clean(tokenizer.decode(row, skip_special_tokens=True)))
                advance(len(gen))
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    return out


class Validator:
    """Scores greedy summaries of the validation users with the stage-1 reward's generator.

    ``summarize(model, tokenizer, messages)`` returns one cleaned summary per message list
    (the policy's greedy decode, :func:`write_summaries`); ``reward`` is the stage's :class:`SummaryReward`, whose frozen
    generator, reference cache, β and loss type are the ones training is rewarded with.
    """

    def __init__(
        self,
        users: Sequence[UserRow],
        messages: Sequence[list[Message]],
        reward: Any,
        summarize: Callable[[Any, Any, Sequence[list[Message]]], list[str]],
        out_dir: Path,
    ):
        self.users = list(users)
        self.messages = list(messages)
        self.reward = reward
        self.summarize = summarize
        self.out_dir = out_dir
        self.examples = [u.examples for u in self.users]
        self._base_margins: list[float] | None = None

    def base_margins(self) -> list[float]:
        """Prompt-only margins (the reference cache), computed once."""
        if self._base_margins is None:
            with self.reward.generator_context():
                chosen, rejected = self.reward.reference.pairs([p for ps in self.examples for p in ps])
            self._base_margins = M.margins(chosen.tolist(), rejected.tolist())
        return self._base_margins

    def run(self, model: Any, tokenizer: Any, step: int, *, write: bool = True,
            name: str | None = None) -> dict[str, Any]:
        """Score the current greedy summaries; with ``write``, save them as ``name``
        (default ``step-NNNNN``) ``.jsonl`` in the output folder."""
        started = time.perf_counter()
        texts = self.summarize(model, tokenizer, self.messages)
        base = self.base_margins()
        with self.reward.generator_context():
            policy = summary_logprobs(self.reward.scorer, self.examples, texts)
        # One pass gives both numbers: the reward is popi_reward on these log-probs and the
        # cached reference (what summary_rewards computes), the accuracy compares margins.
        rewards, margins = [], []
        for pairs, (chosen, rejected) in zip(self.examples, policy):
            ref_c, ref_r = self.reward.reference.pairs(pairs)
            r = popi_reward(chosen, rejected, ref_c, ref_r, beta=self.reward.beta,
                            loss_type=self.reward.loss_type)
            rewards.append(float(r.mean()))
            margins.extend((chosen - rejected).tolist())
        correct = M.accuracy_outcomes(margins, base)
        tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        record = {
            "stage": "stage1",
            "kind": "validation",
            "step": step,
            "val_reward": M.mean(rewards),
            "val_reward_se": M.stderr(rewards),
            "val_accuracy": M.mean(correct),
            "val_accuracy_se": M.stderr(correct),
            "val_summary_tokens": M.mean(tokens),
            "val_users": len(self.users),
            "val_examples": len(correct),
            "val_seconds": round(time.perf_counter() - started, 1),
        }
        if not write:
            return record
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / f"{name or f'step-{step:05d}'}.jsonl").open("w", encoding="utf-8") as fh:
            for user, text, reward in zip(self.users, texts, rewards):
                fh.write(json.dumps({"user_id": user.user_id, "summary": text, "reward": reward}) + "\n")
        log.info(
            "validation at step %d: reward %.3f ± %.3f, accuracy %.1f%% ± %.1f on %d users (%.0f s)",
            step, record["val_reward"], record["val_reward_se"] or 0.0,
            100 * record["val_accuracy"], 100 * (record["val_accuracy_se"] or 0.0), len(self.users),
            record["val_seconds"],
        )
        return record


def logged(metrics_path: Path) -> set[tuple[int, str]]:
    """(step, phase) of the validation records already in ``metrics_path`` (a resumed run)."""
    if not metrics_path.exists():
        return set()
    done = set()
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line) if line else {}
        if rec.get("stage") == "stage1" and rec.get("kind") == "validation":
            done.add((rec["step"], rec.get("phase", "grpo")))
    return done


def validate_and_log(
    validator: Validator, model: Any, tokenizer: Any, metrics_path: Path, *, step: int,
    phase: str, main_process: bool = True,
) -> None:
    """Run ``validator`` once and append its record (with ``phase``: initial, warm_start or
    grpo) to ``metrics_path``, unless that step and phase are logged already. Every process runs
    it (a ZeRO-3 model generates only with all ranks taking part); the main process writes."""
    if (step, phase) in logged(metrics_path):
        return
    # The warm start is validated at step 0 too: its summaries get their own file.
    name = "warm-start" if phase == "warm_start" else None
    record = validator.run(model, tokenizer, step, write=main_process, name=name)
    if main_process:
        with metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({**record, "phase": phase}) + "\n")


def validation_callback(validator: Validator, every: int, metrics_path: Path, tokenizer: Any) -> Any:
    """A TrainerCallback validating every ``every`` GRPO steps and at the last step."""
    from transformers import TrainerCallback

    class Validation(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 or state.global_step >= state.max_steps:
                validate_and_log(validator, model, tokenizer, metrics_path, step=state.global_step,
                                 phase="grpo", main_process=state.is_world_process_zero)

    return Validation()
