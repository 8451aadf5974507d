"""``popi eval`` for the latent-embedding baselines LoRe, PAL-A and PAL-B (paper Table 1).

Each reads a checkpoint of ``popi train latent`` (``RUN/<method>``, given as ``--latent RUN``):
a generator trained jointly with the training users' embeddings, and the encoder that builds an
embedding from mixture weights (:mod:`popi_sdk.train.latent_model`). A held-out user's weights
are fitted to their signal pairs with the generator and the encoder frozen; their examples are
then scored, and their prompts answered, with that vector in the context's one user slot.

The context overhead is that one token (marked † in reports: the cost is a trained generator,
not context), and the conditioning exists only for the generator it was trained with: the
transfer table (``--generators``) cannot include these methods (:func:`check_latent`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from popi_sdk.errors import InputError
from popi_sdk.eval import metrics as M
from popi_sdk.progress import progress_bar
from popi_sdk.signals import UserRow

log = logging.getLogger(__name__)

LATENT_METHODS = ("lore", "pal-a", "pal-b")
OVERHEAD_MARK = "†"
OVERHEAD_NOTE = (
    "† one special token whose embedding is learned per user, with a generator trained for it; "
    "it conditions no other generator."
)


def latent_methods(methods: Sequence[Any]) -> list[Any]:
    return [m for m in methods if m.context == "latent"]


def check_latent(methods: Sequence[Any], latent: str | None, generators: Sequence[str] = ()) -> dict[str, Path]:
    """Fail before any model loads: each latent method needs ``latent/<method>`` written by
    ``popi train latent``, and none can join a transfer table. Returns method -> folder."""
    chosen = latent_methods(methods)
    if not chosen:
        return {}
    names = ", ".join(m.name for m in chosen)
    if generators:
        raise InputError(
            f"method(s) {names} cannot condition the transfer table's generators "
            f"({', '.join(generators)}): their user embedding is a learned input vector of the "
            "generator they were trained with, which no other generator reads (the paper's †). "
            f"Evaluate {names} without --generators, and the transfer table in a separate "
            "`popi eval` without them"
        )
    if not latent:
        raise InputError(
            f"method(s) {names} need a trained latent-embedding run: pass --latent RUN, the --out "
            "of `popi train latent --method lore|pal-a|pal-b --data DIR --out RUN`"
        )
    from popi_sdk.train.latent_model import read_meta

    folders = {}
    for m in chosen:
        folder = Path(latent).expanduser() / m.name
        if not folder.is_dir():
            raise InputError(
                f"method {m.name!r}: {folder} does not exist. Train it with `popi train latent "
                f"--method {m.name} --data DIR --out {latent}`"
            )
        meta = read_meta(folder)
        if meta.get("method") != m.name:
            raise InputError(f"{folder} holds a {meta.get('method')!r} checkpoint, not {m.name!r}")
        folders[m.name] = folder
    return folders


class LatentRun:
    """One latent checkpoint in an evaluation: the held-out users' inferred weights, their margins
    and answers (each computed once). ``reference`` is the base model's prompt-only
    :class:`~popi_sdk.scoring.ReferenceCache`, the reference of the training loss."""

    def __init__(self, folder: str | Path, reference: Any, *, batch_size: int = 8, progress: bool = True):
        import torch

        from popi_sdk.train import latent_model as L

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.folder = Path(folder)
        self.model, self.tokenizer, self.encoder, self.meta = L.load(folder, device=device)
        self.encoder.to(device)
        self.codec = L.Codec(self.tokenizer)
        self.reference = reference
        self.batch_size = batch_size
        self.progress = progress
        self.seconds = {"inference": 0.0}
        self._logits: dict[tuple, Any] = {}
        self.margins: dict[tuple, list[float]] = {}
        self.responses: dict[tuple, list[str]] = {}

    @property
    def name(self) -> str:
        return f"{self.meta['method']}:{self.folder}"

    def logits(self, users: Sequence[UserRow]) -> Any:
        """Each user's mixture logits, fitted to their signal pairs (generator untouched)."""
        from popi_sdk.train.latent_model import infer_weights

        key = tuple(u.user_id for u in users)
        if key not in self._logits:
            started = time.perf_counter()
            steps = self.meta["infer_steps"]
            with progress_bar(f"Fitting {len(users)} users' {self.meta['method']} weights", steps,
                              enabled=self.progress, unit="steps") as advance:
                self._logits[key] = infer_weights(
                    self.model, self.encoder, self.codec, [u.signals.pairs for u in users],
                    self.reference, steps=steps, learning_rate=self.meta["infer_learning_rate"],
                    beta=self.meta["beta"], loss_type=self.meta["loss_type"],
                    batch_size=self.batch_size, advance=advance,
                )
            self.seconds["inference"] += time.perf_counter() - started
        return self._logits[key]

    def _vectors(self, logits: Any, items: Sequence[Any]) -> Any:
        from popi_sdk.train.latent_model import prompt_features

        features = prompt_features(self.model, items) if self.encoder.method == "pal-b" else None
        device = self.model.get_input_embeddings().weight.device
        return self.encoder.embed(logits.to(device), features)

    def margins_for(self, users: Sequence[UserRow]) -> list[float]:
        """``log π(y_c|x,e) − log π(y_r|x,e)`` for every example of every user, in order."""
        import torch

        from popi_sdk.train.latent_model import response_logprobs

        key = tuple(u.user_id for u in users)
        if key in self.margins:
            return self.margins[key]
        logits = self.logits(users)
        flat = [(u, p) for u, row in enumerate(users) for p in row.examples]
        out: list[float] = []
        with torch.no_grad(), progress_bar(f"Scoring {self.meta['method']}", len(flat),
                                           enabled=self.progress) as advance:
            for start in range(0, len(flat), self.batch_size):
                chunk = flat[start : start + self.batch_size]
                items = [it for _, p in chunk for it in self.codec.items(p.prompt, [p.chosen, p.rejected])]
                owners = torch.tensor([u for u, _ in chunk for _ in (0, 1)])
                lp = response_logprobs(self.model, items, self._vectors(logits[owners], items), self.codec.slot_id)
                out.extend(M.margins(lp[0::2].tolist(), lp[1::2].tolist()))
                advance(len(chunk))
        self.margins[key] = out
        return out

    def overheads_for(self, users: Sequence[UserRow]) -> list[int]:
        return [self.codec.overhead(p.prompt) for row in users for p in row.examples]

    def responses_for(self, users: Sequence[UserRow], judged: Sequence[tuple[int, Any]], max_new_tokens: int) -> list[str]:
        """Greedy answers to the judged prompts, each user's vector in the slot."""
        key = (tuple(u.user_id for u in users), tuple((u, p.prompt) for u, p in judged), max_new_tokens)
        if key in self.responses:
            return self.responses[key]
        logits = self.logits(users)
        out: list[str] = []
        bar = progress_bar(f"Generating {self.meta['method']}", len(judged), enabled=self.progress)
        with bar as advance:
            for start in range(0, len(judged), self.batch_size):
                out.extend(self._generate(logits, judged[start : start + self.batch_size], max_new_tokens))
                advance(min(self.batch_size, len(judged) - start))
        self.responses[key] = out
        return out

    def _generate(self, logits: Any, chunk: Sequence[tuple[int, Any]], max_new_tokens: int) -> list[str]:
        """One left-padded batch of greedy answers from ``inputs_embeds``."""
        import torch

        model, tok = self.model, self.tokenizer
        device = model.get_input_embeddings().weight.device
        items = [self.codec.items(p.prompt, ["."])[0] for _, p in chunk]
        width = max(len(it.context) for it in items)
        ids = torch.full((len(items), width), self.codec.slot_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        slot = torch.zeros((len(items), width, 1), dtype=torch.bool)
        for row, it in enumerate(items):
            ids[row, width - len(it.context):] = torch.tensor(it.context)
            mask[row, width - len(it.context):] = 1
            slot[row, width - len(it.context) + it.slot] = True
        with torch.inference_mode():
            vectors = self._vectors(logits[torch.tensor([u for u, _ in chunk])], items)
            embeds = model.get_input_embeddings()(ids.to(device))
            embeds = torch.where(slot.to(device), vectors.to(embeds.dtype).unsqueeze(1), embeds)
            new = model.generate(
                inputs_embeds=embeds, attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=tok.pad_token_id,
            )
        # With inputs_embeds only, generate returns the new tokens alone.
        return [tok.decode(row, skip_special_tokens=True).strip() for row in new]


def load_latent_runs(folders: dict[str, Path], base_run: Any, *, batch_size: int, progress: bool) -> dict[str, LatentRun]:
    """A :class:`LatentRun` per method, with ``base_run``'s reference cache. Warns when the base
    model is not the one the run started from: the fit's reference and reward accuracy's
    baseline are then another model's."""
    import os

    runs = {}
    for name, folder in folders.items():
        run = runs[name] = LatentRun(folder, base_run.ref, batch_size=batch_size, progress=progress)
        start, base = run.meta.get("base_model"), getattr(base_run.backend, "path", None)
        if start and base and os.path.realpath(start) != os.path.realpath(base):
            log.warning(
                "%s was trained from %s, but --base is %s: pass --base %s so the reference and the "
                "baseline are the model it started from", folder, start, base, start,
            )
    return runs
