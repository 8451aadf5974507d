"""The summary-augmented DPO / IPO objective against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from popi_sdk.objective import kl_weight, popi_loss, popi_margin, popi_reward


def test_margin_is_the_policy_log_ratio_minus_the_reference_log_ratio():
    # policy prefers chosen by 3 nats, reference by 1: Δ = 2
    assert popi_margin(-10.0, -13.0, -20.0, -21.0) == pytest.approx(2.0)


def test_dpo_loss_is_minus_log_sigmoid_of_beta_delta():
    pc, pr, rc, rr = (torch.tensor([x]) for x in (-10.0, -13.0, -20.0, -21.0))
    loss = popi_loss(pc, pr, rc, rr, beta=0.5)
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 2.0))), abs=1e-6)
    # Δ = 0 gives log 2, whatever β
    zero = popi_loss(torch.tensor(-5.0), torch.tensor(-6.0), torch.tensor(-5.0), torch.tensor(-6.0), beta=0.01)
    assert float(zero) == pytest.approx(math.log(2), abs=1e-6)


def test_ipo_loss_is_squared_distance_to_the_target_margin():
    pc, pr, rc, rr = (torch.tensor(x) for x in (-10.0, -13.0, -20.0, -21.0))
    loss = popi_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")
    assert float(loss) == pytest.approx((2.0 - 1 / (2 * 0.1)) ** 2, abs=1e-5)


@pytest.mark.parametrize("loss_type", ["dpo", "ipo"])
def test_reward_is_minus_loss_and_grows_with_the_margin(loss_type):
    ref_c, ref_r = torch.tensor([-20.0, -20.0]), torch.tensor([-21.0, -21.0])
    pol_c = torch.tensor([-12.0, -10.0])  # the second summary makes chosen likelier
    pol_r = torch.tensor([-13.0, -13.0])
    loss = popi_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1, loss_type=loss_type)
    reward = popi_reward(pol_c, pol_r, ref_c, ref_r, beta=0.1, loss_type=loss_type)
    assert torch.equal(reward, -loss)
    assert reward[1] > reward[0]  # Δ = 2 beats Δ = 0 (IPO's target 1/(2β) = 5 is further away)


def test_gradient_flows_to_the_policy_log_probs():
    pol_c = torch.tensor(-10.0, requires_grad=True)
    popi_loss(pol_c, torch.tensor(-11.0), torch.tensor(-10.0), torch.tensor(-11.0), beta=0.1).backward()
    assert pol_c.grad is not None and float(pol_c.grad) == pytest.approx(-0.1 * 0.5, abs=1e-6)


def test_kl_weight_follows_the_paper():
    assert kl_weight(0.01) == pytest.approx(2e-5)
    assert kl_weight(0.01, "ipo") == pytest.approx(0.4)


def test_bad_arguments_name_the_fix():
    one = torch.tensor(0.0)
    from popi_sdk.errors import InputError

    with pytest.raises(InputError, match="beta must be positive"):
        popi_loss(one, one, one, one, beta=0)
    with pytest.raises(InputError, match="'dpo' or 'ipo'"):
        popi_loss(one, one, one, one, beta=0.1, loss_type="kto")
