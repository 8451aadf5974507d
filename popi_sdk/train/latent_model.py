"""The latent-embedding baselines of the paper's Table 1: LoRe (Bose et al. 2025, arXiv 2504.14439)
and PAL-A / PAL-B (Chen et al. 2024, arXiv 2406.08469), as the POPI paper runs them.

A user is not described in text: one token of the generator's input is a learned vector, the
user's embedding, and the generator is trained jointly with those embeddings on the training users'
preferences (:mod:`popi_sdk.train.latent`). The three methods differ in how the vector is built
from a few per-user numbers (softmax mixture weights ``w`` over ``K`` learned components):

- ``lore``: ``e = V·w``, ``V`` a learned low-rank basis ``[hidden, K]`` (LoRe's shared basis of
  reward directions; the public code's ``V @ softmax(W)``).
- ``pal-a``: ``e = f(Pᵀ·w)``, ``P`` ``K`` learned prototype ideal points and ``f`` a residual
  two-layer projector (PAL's ideal-point model A, the public code's ``f(Pw)`` user learner).
- ``pal-b``: ``e(x) = Σ_k w_k·g_k(h(x))``: ``K`` learned prototype *functions* ``g_k`` of the
  prompt ``x``, mixed by the user's weights (PAL's model B, whose user ideal point is a mixture of
  prototype projections of the prompt). ``h(x)`` is the mean of the generator's input
  embeddings over the prompt's tokens.

A new user gets only new weights ``w``, fitted to their signal pairs by gradient descent on the
same loss with everything else frozen (:func:`infer_weights`), as both papers personalize for
unseen users. The vector sits right before the prompt in the chat-templated context, so the
context costs one token (the paper's †).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from popi_sdk.errors import InputError
from popi_sdk.objective import LossType, popi_loss
from popi_sdk.templates import prompt_only_messages

METHODS = ("lore", "pal-a", "pal-b")
META_FILE = "popi_latent.json"
WEIGHTS_FILE = "latent.pt"


# -- the user encoders --------------------------------------------------------------------------
class UserEncoder(nn.Module):
    """Maps mixture logits (and, for PAL-B, prompt features) to one input vector per row.

    ``weights`` holds the training users' logits ``[n_users, K]``; a held-out user's logits are
    fitted separately (:func:`infer_weights`) and passed to :meth:`embed`."""

    method = ""

    def __init__(self, hidden: int, rank: int, n_users: int, scale: float):
        super().__init__()
        self.hidden, self.rank = hidden, rank
        # Random logits, as both papers' code initializes user weights.
        self.weights = nn.Parameter(torch.randn(n_users, rank))

    def embed(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, users: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed(self.weights[users], features)


def _mlp(hidden: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), act, nn.Linear(hidden, hidden))


class LoReEncoder(UserEncoder):
    method = "lore"

    def __init__(self, hidden: int, rank: int, n_users: int, scale: float):
        super().__init__(hidden, rank, n_users, scale)
        self.basis = nn.Parameter(torch.randn(hidden, rank) * scale)

    def embed(self, logits, features=None):
        return torch.softmax(logits, dim=-1) @ self.basis.T


class PalAEncoder(UserEncoder):
    method = "pal-a"

    def __init__(self, hidden: int, rank: int, n_users: int, scale: float):
        super().__init__(hidden, rank, n_users, scale)
        self.prototypes = nn.Parameter(torch.randn(rank, hidden) * scale)
        self.projector = _mlp(hidden, nn.ReLU())
        nn.init.zeros_(self.projector[2].weight)  # residual: starts as the identity
        nn.init.zeros_(self.projector[2].bias)

    def embed(self, logits, features=None):
        point = torch.softmax(logits, dim=-1) @ self.prototypes
        return point + self.projector(point)


class PalBEncoder(UserEncoder):
    method = "pal-b"

    def __init__(self, hidden: int, rank: int, n_users: int, scale: float):
        super().__init__(hidden, rank, n_users, scale)
        self.functions = nn.ModuleList(_mlp(hidden, nn.GELU()) for _ in range(rank))
        self.scale = scale

    def embed(self, logits, features=None):
        if features is None:
            raise InputError("pal-b builds the user vector from the prompt: pass its features")
        w = torch.softmax(logits, dim=-1)  # [B, K]
        # Normalized features, so the vector starts at a token embedding's size whatever the prompt.
        h = features / features.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        per_k = torch.stack([g(h) for g in self.functions], dim=1)  # [B, K, hidden]
        return (w.unsqueeze(-1) * per_k).sum(1) * (self.scale * math.sqrt(self.hidden))


ENCODERS: dict[str, type[UserEncoder]] = {c.method: c for c in (LoReEncoder, PalAEncoder, PalBEncoder)}


def make_encoder(method: str, hidden: int, rank: int, n_users: int, scale: float, seed: int = 0) -> UserEncoder:
    if method not in ENCODERS:
        raise InputError(f"unknown latent method {method!r}; choose from {', '.join(METHODS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ENCODERS[method](hidden, rank, n_users, scale)


# -- the one-token context ----------------------------------------------------------------------
@dataclass
class Item:
    """One response to score after one user-token context."""

    context: list[int]  # chat-templated prompt-only tokens with the user slot in them
    slot: int  # index of the user token in ``context``
    response: list[int]
    prompt: list[int]  # the prompt's own tokens (PAL-B's features)


class Codec:
    """Token ids of a prompt-only chat context with one user slot, and of responses after it,
    tokenized as :class:`~popi_sdk.scoring.SequenceScorer` tokenizes them (its helpers)."""

    def __init__(self, tokenizer: Any):
        from popi_sdk.scoring import SequenceScorer

        self.tokenizer = tokenizer
        self.text = SequenceScorer(None, tokenizer)  # tokenization only; never runs a model
        # Any id will do: its embedding is replaced by the user's vector.
        self.slot_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def context(self, prompt: str) -> tuple[list[int], int, str]:
        """(ids with the slot, slot index, the prompt-only template text). The slot goes right
        before the user's message, split from the rendered text so the rest tokenizes as is."""
        text = self.text.prompt_text(prompt_only_messages(prompt))
        at = text.rfind(prompt) if prompt else -1
        if at < 0:
            at = 0  # a template that rewrites the message: put the user first
        before = self.text.encode(text[:at]) if at else []
        return before + [self.slot_id] + self.text.encode(text[at:]), len(before), text

    def overhead(self, prompt: str) -> int:
        """Tokens the user slot adds to the prompt-only context (1, unless the split at the slot
        changed how the template tokenizes)."""
        ids, _, text = self.context(prompt)
        return len(ids) - len(self.text.encode(text))

    def items(self, prompt: str, responses: Sequence[str]) -> list[Item]:
        ids, slot, text = self.context(prompt)
        messages = prompt_only_messages(prompt)
        own = self.text.encode(prompt)
        return [
            Item(ids, slot, self.text.encode(self.text.completion_text(messages, text, r)), own)
            for r in responses
        ]


def prompt_features(model: Any, items: Sequence[Item]) -> torch.Tensor:
    """``h(x)``: the mean input embedding of each item's prompt tokens (no gradient)."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        rows = [emb.weight[torch.tensor(it.prompt or [0], device=emb.weight.device)].mean(0) for it in items]
    return torch.stack(rows).float()


def response_logprobs(model: Any, items: Sequence[Item], vectors: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Summed log-probs of each item's response, the item's user vector at its slot. Left padded,
    so every response ends at the last position and the LM head runs over responses only; the
    gradient reaches ``vectors`` (and the model's weights where they require it)."""
    from popi_sdk.scoring import _summed_logprobs

    device = model.get_input_embeddings().weight.device
    width = max(len(it.context) + len(it.response) for it in items)
    keep = max(len(it.response) for it in items) + 1
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    pos = torch.zeros((len(items), width), dtype=torch.long)
    slot = torch.zeros((len(items), width, 1), dtype=torch.bool)
    targets = torch.full((len(items), keep - 1), -1, dtype=torch.long)
    for row, it in enumerate(items):
        seq = it.context + it.response
        start = width - len(seq)
        ids[row, start:] = torch.tensor(seq)
        mask[row, start:] = 1
        pos[row, start:] = torch.arange(len(seq))
        slot[row, start + it.slot] = True
        targets[row, keep - 1 - len(it.response):] = torch.tensor(it.response)
    ids, mask, pos, slot = ids.to(device), mask.to(device), pos.to(device), slot.to(device)
    embeds = model.get_input_embeddings()(ids)
    embeds = torch.where(slot, vectors.to(embeds.dtype).unsqueeze(1), embeds)
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
    return _summed_logprobs(logits[:, :-1], targets.to(device))


def pair_loss(
    model: Any, encoder: UserEncoder, logits: torch.Tensor, chosen: Sequence[Item],
    rejected: Sequence[Item], ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *,
    beta: float, loss_type: LossType, pad_id: int,
) -> torch.Tensor:
    """The summary-augmented loss (:func:`popi_sdk.objective.popi_loss`) per pair, the user's
    vector in place of a summary; ``logits[i]`` are pair ``i``'s user's mixture logits."""
    features = prompt_features(model, chosen) if encoder.method == "pal-b" else None
    vectors = encoder.embed(logits, features)
    both = response_logprobs(model, [*chosen, *rejected], torch.cat([vectors, vectors]), pad_id)
    n = len(chosen)
    return popi_loss(both[:n], both[n:], ref_chosen, ref_rejected, beta=beta, loss_type=loss_type)


def infer_weights(
    model: Any, encoder: UserEncoder, codec: Codec, pairs: Sequence[Sequence[Any]],
    ref: Any, *, steps: int, learning_rate: float, beta: float, loss_type: LossType = "dpo",
    batch_size: int = 8, advance: Any = None,
) -> torch.Tensor:
    """Mixture logits ``[n_users, K]`` for new users from their preference ``pairs`` (each a list
    of :class:`~popi_sdk.signals.PreferencePair`): Adam on the loss with the generator and the
    encoder frozen, starting from the uniform mixture (the population's centre). ``ref`` is a
    :class:`~popi_sdk.scoring.ReferenceCache` of the model the training reference came from.
    Users without pairs keep the uniform mixture. Nothing but the returned logits changes.
    ``advance()`` is called after each step (a progress bar's)."""
    device = model.get_input_embeddings().weight.device
    logits = torch.zeros(len(pairs), encoder.rank, device=device, requires_grad=True)
    flat = [(u, p) for u, ps in enumerate(pairs) for p in ps]
    if not flat or steps < 1:
        return logits.detach()
    chosen = [codec.items(p.prompt, [p.chosen])[0] for _, p in flat]
    rejected = [codec.items(p.prompt, [p.rejected])[0] for _, p in flat]
    ref_c, ref_r = (t.to(device) for t in ref.pairs([p for _, p in flat]))
    owner = torch.tensor([u for u, _ in flat], device=device)
    count = torch.bincount(owner, minlength=len(pairs)).clamp(min=1).float()
    frozen = [(p, p.requires_grad) for p in [*model.parameters(), *encoder.parameters()]]
    for p, _ in frozen:
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    opt = torch.optim.Adam([logits], lr=learning_rate)
    try:
        for _ in range(steps):
            opt.zero_grad()
            for start in range(0, len(flat), batch_size):
                idx = slice(start, start + batch_size)
                loss = pair_loss(model, encoder, logits[owner[idx]], chosen[idx], rejected[idx],
                                 ref_c[idx], ref_r[idx], beta=beta, loss_type=loss_type,
                                 pad_id=codec.slot_id)
                # Each user's mean loss: users are independent, and Adam is per coordinate.
                (loss / count[owner[idx]]).sum().backward()
            opt.step()
            if advance is not None:
                advance()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    return logits.detach()


# -- checkpoints --------------------------------------------------------------------------------
def save(folder: Path, model: Any, tokenizer: Any, encoder: UserEncoder, meta: dict) -> Path:
    """RUN/<method>/: ``generator/`` (a plain checkpoint), ``latent.pt`` (the encoder) and
    ``popi_latent.json`` (what reading them needs), written last so a half-written folder is
    never taken for a finished one."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder / "generator")
    tokenizer.save_pretrained(folder / "generator")
    torch.save(encoder.state_dict(), folder / WEIGHTS_FILE)
    meta = {**meta, "method": encoder.method, "rank": encoder.rank, "hidden_size": encoder.hidden}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def read_meta(folder: str | Path) -> dict:
    path = Path(folder).expanduser() / META_FILE
    if not path.exists():
        raise InputError(
            f"{Path(folder)} is not a latent-embedding checkpoint (no {META_FILE}): train one with "
            "`popi train latent --method lore|pal-a|pal-b --data DIR --out RUN` and give RUN"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e}); retrain into a fresh --out folder") from None


def load(folder: str | Path, *, device: str | None = None) -> tuple[Any, Any, UserEncoder, dict]:
    """(generator, tokenizer, encoder, meta) of a folder :func:`save` wrote; all frozen, eval mode."""
    from popi_sdk.train.common import load_tokenizer
    from transformers import AutoModelForCausalLM

    folder = Path(folder).expanduser()
    meta = read_meta(folder)
    model = AutoModelForCausalLM.from_pretrained(folder / "generator", dtype="float32")
    if device:
        model.to(device)
    model.requires_grad_(False).eval()
    tokenizer = load_tokenizer(str(folder / "generator"))
    encoder = make_encoder(meta["method"], meta["hidden_size"], meta["rank"], len(meta["train_users"]),
                           meta.get("scale", 0.02))
    encoder.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu"))
    encoder.requires_grad_(False).eval()
    return model, tokenizer, encoder, meta
