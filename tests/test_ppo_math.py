"""PPO's pure functions against hand-computed values (arithmetic in each docstring)."""

import math

import pytest
import torch

from open_rlhf.rl_math import (
    AdaptiveKLController,
    compute_gae,
    compute_rewards,
    group_baseline,
    masked_mean,
    masked_whiten,
    per_token_kl,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_pp_advantages,
    response_mask_after_eos,
)


def test_response_mask_keeps_tokens_up_to_first_eos():
    """EOS id 2. Row 0: EOS at index 1 -> tokens 0,1 valid. Row 1: no EOS -> all valid. Row 2: EOS first."""
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
    mask, has_eos = response_mask_after_eos(responses, 2)
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True], [True, False, False, False]]
    assert has_eos.tolist() == [True, False, True]
    mask, _ = response_mask_after_eos(responses, [7, 2])  # several stop ids: the first of any
    assert mask[1].tolist() == [True, True, True, False]


def test_compute_rewards_places_score_on_last_valid_token():
    """beta = 0.1, logp - ref = [0.5, -0.2, 0.3] with mask [1, 1, 0], score 2.0.

    kl = [0.5, -0.2, 0] ; rewards = -0.1 * kl = [-0.05, 0.02, 0] ; score on index 1: [-0.05, 2.02, 0].
    """
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.8, -0.8]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards, kl = compute_rewards(torch.tensor([2.0]), logprobs, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -0.2, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 2.02, 0.0]]))


def test_k3_estimator():
    """log r = ref - logp = -0.5: k3 = (e^-0.5 - 1) - (-0.5) = 0.60653 - 1 + 0.5 = 0.10653 (>= 0)."""
    kl = per_token_kl(torch.tensor([-1.0]), torch.tensor([-1.5]), "k3")
    assert kl.item() == pytest.approx(math.exp(-0.5) - 1 + 0.5, abs=1e-6)
    with pytest.raises(ValueError, match="k1"):
        per_token_kl(torch.tensor([0.0]), torch.tensor([0.0]), "k2")


def test_k3_is_clamped_where_the_policy_is_far_below_the_reference():
    """log r = ref - logp = -1 - (-60) = 59: unclamped k3 = e^59 - 1 - 59 ~ 4.2e25, which would swamp every reward.
    Clamped to [-10, 10] as OpenRLHF's compute_approx_kl does: 10.0. A small log-ratio is untouched."""
    kl = per_token_kl(torch.tensor([-60.0, -1.0]), torch.tensor([-1.0, -1.5]), "k3")
    assert kl[0].item() == 10.0
    assert kl[1].item() == pytest.approx(math.exp(-0.5) - 1 + 0.5, abs=1e-6)


def test_gae_hand_computed():
    """gamma = 0.9, lam = 0.8, rewards [0, 0, 1], values [0.5, 0.6, 0.7], all valid; V after the end = 0.

    delta_2 = 1 + 0.9*0 - 0.7 = 0.3                   A_2 = 0.3
    delta_1 = 0 + 0.9*0.7 - 0.6 = 0.03                A_1 = 0.03 + 0.72*0.3 = 0.246
    delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04                A_0 = 0.04 + 0.72*0.246 = 0.21712
    returns = A + V = [0.71712, 0.846, 1.0]
    """
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = compute_gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0]]))


def test_gae_treats_tokens_after_the_end_as_terminal():
    """mask [1, 1, 0]: the value at index 2 (padding, 5.0) must not be bootstrapped from.

    gamma = lam = 1, rewards [0, 1, 9(padding)], values [0.2, 0.4, 5.0]:
    delta_1 = 1 + 0 - 0.4 = 0.6 ; A_1 = 0.6 ; delta_0 = 0 + 0.4 - 0.2 = 0.2 ; A_0 = 0.2 + 0.6 = 0.8.
    """
    adv, ret = compute_gae(torch.tensor([[0.0, 1.0, 9.0]]), torch.tensor([[0.2, 0.4, 5.0]]),
                           torch.tensor([[1.0, 1.0, 0.0]]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.6, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 0.0]]))


def test_masked_whiten():
    """values [1, 2, 3, 100(masked)]: mean 2, unbiased var 1 -> [-1, 0, 1, 0]."""
    out = masked_whiten(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0, 0.0]), atol=1e-4, rtol=0)
    assert masked_mean(torch.tensor([1.0, 3.0, 50.0]), torch.tensor([1, 1, 0])).item() == 2.0


def test_policy_loss_clipping_hand_computed():
    """eps = 0.2. Token 0: A = 1, ratio e^0.5 = 1.6487 -> clipped to 1.2: max(-1.6487, -1.2) = -1.2 (clipped).
    Token 1: A = -1, ratio e^-0.5 = 0.6065 -> clip 0.8: max(0.6065, 0.8) = 0.8 (clipped).
    Token 2: A = 2, ratio 1 -> -2 (not clipped).  loss = mean(-1.2, 0.8, -2) = -0.8;  clipfrac = 2/3;
    approxkl = 0.5 * mean(0.25, 0.25, 0) = 1/12.
    """
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.5, -0.5, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, stats = ppo_policy_loss(new, old, adv, torch.ones(1, 3), cliprange=0.2)
    assert loss.item() == pytest.approx(-0.8, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["approxkl"].item() == pytest.approx(1 / 12)
    loss.backward()
    # clipped tokens get no gradient; the unclipped one gets d(-A*ratio)/dlogp / 3 = -2/3
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, 0.0, -2 / 3]]))


def test_value_loss_clipping_hand_computed():
    """eps_v = 0.2, old V = [0, 0], new V = [1, 0.1], returns G = [0.5, 1].
    Token 0: unclipped (1-0.5)^2 = 0.25; clipped V = 0.2 -> (0.2-0.5)^2 = 0.09 -> max 0.25.
    Token 1: unclipped (0.1-1)^2 = 0.81; clipped V = 0.1 (inside) -> 0.81.  loss = 0.5 * mean(0.25, 0.81) = 0.265.
    clipfrac: clipped > unclipped nowhere -> 0;  error = mean(0.25, 0.81) = 0.53.
    """
    loss, stats = ppo_value_loss(torch.tensor([[1.0, 0.1]]), torch.zeros(1, 2), torch.tensor([[0.5, 1.0]]),
                                 torch.ones(1, 2), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.265)
    assert stats["clipfrac"].item() == 0.0
    assert stats["error"].item() == pytest.approx(0.53)


def test_adaptive_kl_controller():
    """target 6, horizon 10000, beta 0.1. KL 9: e = clip(9/6 - 1, ±0.2) = 0.2; beta *= 1 + 0.2*100/10000 -> 0.1002.
    Then KL 3: e = -0.5 -> -0.2; beta *= 1 - 0.002 -> 0.1002 * 0.998 = 0.0999996."""
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 100)
    assert ctl.value == pytest.approx(0.1002)
    ctl.update(3.0, 100)
    assert ctl.value == pytest.approx(0.1002 * 0.998)


def test_reinforce_pp_advantages_hand_computed():
    """rewards [[-0.1, 0.2, 1.0], [0.3, -0.1, 0.0]], mask [[1,1,1],[1,1,0]].

    Reward-to-go: row 0 = [1.1, 1.2, 1.0]; row 1 = [0.2, -0.1, 0] (masked). Valid values 1.1, 1.2, 1.0, 0.2, -0.1:
    mean = 3.4 / 5 = 0.68; squared deviations 0.1764, 0.2704, 0.1024, 0.2304, 0.6084 -> sum 1.388,
    unbiased variance 1.388 / 4 = 0.347, std 0.58907. A = (x - 0.68) / 0.58907.
    """
    rewards = torch.tensor([[-0.1, 0.2, 1.0], [0.3, -0.1, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    std = math.sqrt(0.347)
    expected = torch.tensor([[(1.1 - 0.68) / std, (1.2 - 0.68) / std, (1.0 - 0.68) / std],
                             [(0.2 - 0.68) / std, (-0.1 - 0.68) / std, 0.0]])
    torch.testing.assert_close(reinforce_pp_advantages(rewards, mask), expected, atol=1e-4, rtol=1e-4)


def test_reinforce_pp_advantages_discounted():
    """gamma = 0.5, rewards [0, 0, 1], all valid: reward-to-go [0.25, 0.5, 1.0].

    mean = 1.75 / 3 = 0.583333; unbiased var = (0.111111 + 0.006944 + 0.173611) / 2 = 0.145833, std = 0.381881
    A = (G - mean) / std = [-0.872872, -0.218218, 1.091089].
    """
    advantages = reinforce_pp_advantages(torch.tensor([[0.0, 0.0, 1.0]]), torch.ones(1, 3), gamma=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[-0.872872, -0.218218, 1.091089]]), atol=1e-5, rtol=0)


def test_policy_loss_normalised_by_a_given_token_count():
    """The micro-batch's share of a larger batch's token mean: sum of the per-token losses / num_tokens.

    ratio 1 everywhere (logp == old): per-token loss = -A = [-1, 2, -3], mask [1, 1, 0]: sum = 1; / 4 = 0.25
    (masked_mean would give 0.5).
    """
    logp = torch.zeros(1, 3)
    loss, _ = ppo_policy_loss(logp, logp, torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[1.0, 1.0, 0.0]]), 0.2,
                              num_tokens=4)
    assert loss.item() == pytest.approx(0.25)
    value_loss, _ = ppo_value_loss(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[1.0, 2.0, 0.0]]),
                                   torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[1.0, 1.0, 0.0]]), 0.2, num_tokens=4)
    assert value_loss.item() == pytest.approx(0.5 * (1 + 4) / 4)


def test_masked_whiten_global_statistics_over_processes():
    """Two 'processes' holding [1, 2] and [3, 6]: global mean 3, unbiased variance (4+1+0+9)/3 = 14/3.

    A fake all-reduce adds the other process's partial sum; the local result must equal whitening the
    concatenation [1, 2, 3, 6] in one process.
    """
    local, other = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 6.0]])
    mask = torch.ones(1, 2)
    partials = iter([mask.sum(), other.sum(), ((other - 3.0) ** 2).sum()])

    def reduce_sum(tensor):
        return tensor + next(partials)

    got = masked_whiten(local, mask, reduce_sum=reduce_sum)
    whole = masked_whiten(torch.cat([local, other], 1), torch.ones(1, 4))
    torch.testing.assert_close(got, whole[:, :2])
    torch.testing.assert_close(got, (local - 3.0) / math.sqrt(14 / 3))


def test_group_baseline_subtracts_each_groups_mean():
    """Groups of 3: [1, 0, 0] -> mean 1/3 -> [2/3, -1/3, -1/3]; [1, 1, 1] -> zeros (no signal); group size 1 ->
    zeros; 4 scores do not split into groups of 3."""
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(group_baseline(scores, 3), torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(group_baseline(scores, 1), torch.zeros(6))
    with pytest.raises(ValueError, match="groups of 3"):
        group_baseline(torch.zeros(4), 3)


def test_step_rewards_are_added_where_they_are_placed():
    logprobs = torch.zeros(1, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    step = torch.tensor([[0.0, -0.5, 0.0, 0.0]])
    rewards, _ = compute_rewards(torch.tensor([1.0]), logprobs, logprobs, mask, kl_coef=0.1, step_rewards=step)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.5, 1.0, 0.0]]))
