"""PPO's maths against hand-computed values: per-token rewards, GAE, whitening, the clipped
losses and the adaptive KL coefficient."""

from __future__ import annotations

import math

import pytest
import torch

from srlm.trainer.ppo import gae, next_kl_coef, ppo_losses, token_rewards, whiten

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_token_rewards_are_the_kl_penalty_plus_the_score_at_the_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    got = token_rewards(torch.tensor([1.0, 2.0]), kl, MASK, kl_coef=0.1)
    torch.testing.assert_close(got, torch.tensor([[-0.01, -0.02, 0.97], [-0.05, 1.95, 0.0]]))


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.0]])  # 9: padding, never read
    advantages, returns = gae(rewards, values, MASK, gamma=1.0, lam=0.95)
    # row 0: A2 = 1 - 0.1; A1 = (0 + 0.1 - 0.2) + 0.95 A2; A0 = (0 + 0.2 - 0.5) + 0.95 A1
    a2 = 0.9
    a1 = -0.1 + 0.95 * a2
    a0 = -0.3 + 0.95 * a1
    # row 1 ends at t=1: A1 = 2 - 0.4; A0 = (0 + 0.4 - 0.3) + 0.95 A1
    b1 = 1.6
    b0 = 0.1 + 0.95 * b1
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.1], [b0 + 0.3, b1 + 0.4, 0.0]]))
    # gamma < 1 discounts the next value
    advantages, _ = gae(rewards[:1], values[:1], MASK[:1], gamma=0.5, lam=1.0)
    assert float(advantages[0, 1]) == pytest.approx((0 + 0.5 * 0.1 - 0.2) + 0.5 * (1 - 0.1))


def test_whiten_uses_the_masked_entries_only():
    got = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(got, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_clipped_losses_by_hand():
    one = torch.ones(2, 1)
    new = torch.tensor([[math.log(1.5)], [math.log(1.5)]])
    losses = ppo_losses(new, torch.zeros(2, 1), torch.tensor([[1.0], [-1.0]]), vpred=torch.tensor([[1.0], [1.0]]),
                        old_values=torch.zeros(2, 1), returns=torch.tensor([[0.5], [0.5]]), mask=one,
                        cliprange=0.2, cliprange_value=0.2)
    # ratio 1.5: for A = 1 the clipped 1.2 counts (-1.2), for A = -1 the unclipped 1.5
    assert float(losses["pg_loss"]) == pytest.approx((-1.2 + 1.5) / 2)
    assert float(losses["clipfrac"]) == pytest.approx(1.0)
    assert float(losses["ratio"]) == pytest.approx(1.5)
    assert float(losses["approx_kl"]) == pytest.approx(0.5 * math.log(1.5) ** 2)
    # value 1.0 against return 0.5, clipped to 0.2 around the old 0: max(0.25, 0.09) / 2
    assert float(losses["vf_loss"]) == pytest.approx(0.125)
    same = ppo_losses(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([[1.0], [-1.0]]), vpred=torch.zeros(2, 1),
                      old_values=torch.zeros(2, 1), returns=torch.zeros(2, 1), mask=one, cliprange=0.2,
                      cliprange_value=0.2)
    assert float(same["clipfrac"]) == 0.0 and float(same["ratio"]) == 1.0


def test_adaptive_kl_coefficient_moves_towards_the_target():
    assert next_kl_coef(0.2, kl=12.0, target=None, horizon=10000, samples=16) == 0.2
    assert next_kl_coef(0.2, kl=12.0, target=6.0, horizon=10000, samples=16) == pytest.approx(0.2 * (1 + 0.2 * 16 / 1e4))
    assert next_kl_coef(0.2, kl=3.0, target=6.0, horizon=100, samples=10) == pytest.approx(0.2 * (1 - 0.2 * 0.1))
    assert next_kl_coef(0.2, kl=6.6, target=6.0, horizon=100, samples=10) == pytest.approx(0.2 * (1 + 0.1 * 0.1))


def test_ppo_config_is_validated_at_start_up():
    from srlm.config import ConfigError, parse_config

    cfg = parse_config({"run": {"objective": "ppo"}, "ppo": {"target_kl": 6.0}}, environ={})
    assert (cfg.ppo.kl_coef, cfg.ppo.num_epochs, cfg.ppo.vf_coef, cfg.ppo.lam) == (0.05, 4.0, 0.1, 0.95)  # TRL's
    with pytest.raises(ConfigError, match="run.objective: PPO rounds run on one process"):
        parse_config({"run": {"objective": "ppo"}, "distributed": {"strategy": "ddp"}}, environ={})
    with pytest.raises(ConfigError, match="ppo.gamma"):
        parse_config({"ppo": {"gamma": 1.5}}, environ={})
