"""The summary-augmented DPO / IPO objective (paper §4). Training and evaluation both call
:func:`popi_loss`, so the reward GRPO optimizes and the numbers evaluation reports cannot drift.

For one example ``(x, y_c, y_r)`` and summary ``z``::

    Δ = (log πθ(y_c|x,z) − log πref(y_c|x)) − (log πθ(y_r|x,z) − log πref(y_r|x))
    DPO:  l = −log σ(β·Δ)
    IPO:  l = (Δ − 1/(2β))²

The reference terms are conditioned on the prompt only, so they do not depend on ``z``.
Reward for a summary = −l (averaged over the user's examples by the caller).
"""

from __future__ import annotations

from typing import Literal

from popi_sdk.errors import InputError

LossType = Literal["dpo", "ipo"]


def popi_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """Δ: the policy's log-ratio margin minus the reference's (tensors or floats)."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def popi_loss(
    policy_chosen,
    policy_rejected,
    ref_chosen,
    ref_rejected,
    *,
    beta: float,
    loss_type: LossType = "dpo",
):
    """Summary-augmented loss per example. Inputs are summed log-probs (torch tensors, same shape)."""
    import torch.nn.functional as F

    if beta <= 0:
        raise InputError(f"beta must be positive, got {beta}")
    delta = popi_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if loss_type == "dpo":
        return -F.logsigmoid(beta * delta)
    if loss_type == "ipo":
        return (delta - 1.0 / (2.0 * beta)) ** 2
    raise InputError(f"loss_type must be 'dpo' or 'ipo', got {loss_type!r}")


def popi_reward(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, loss_type="dpo"):
    """Reward = −loss."""
    return -popi_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta, loss_type=loss_type
    )


def kl_weight(beta: float, loss_type: LossType = "dpo") -> float:
    """GRPO's KL weight α: 0.002·β for DPO, 0.002·2/β for IPO (paper §4; the official code
    divides the loss by β and uses a KL weight of 2e-3, which is the same thing)."""
    return 0.002 * beta if loss_type == "dpo" else 0.002 * 2.0 / beta
