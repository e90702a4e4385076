"""The pure math of RL for language models: masking, KL estimators, per-token rewards, GAE, REINFORCE++
advantages, the clipped PPO losses, the KL controllers and TRPO's natural-gradient step (Fisher-vector products,
conjugate gradient, the KL-bounded line search). Tensors in, tensors out; no model, no trainer.

Kept apart from the training loop (`open_rlhf.trainers.ppo`) as OpenRLHF keeps its ``ppo_utils``, so that the
evaluation and other trainers use the same masking and estimators, and every function is tested against
hand-computed values (``tests/test_ppo_math.py``). Shapes: B sequences, R response tokens.

Anything that reduces over a batch (`masked_whiten`, `reinforce_pp_advantages`) takes ``reduce_sum``: with it
the statistics are those of the global batch of every process, without it of this process's batch only.

This module imports nothing from the project.
"""

from __future__ import annotations

import torch

K3_CLAMP = 10.0  # bound of the k3 estimator per token, in nats (OpenRLHF's compute_approx_kl)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (over ``dim``, or all positions)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, reduce_sum=None) -> torch.Tensor:
    """Normalise ``values`` to zero mean, unit variance over the masked positions; masked-out positions -> 0.

    Uses the unbiased variance (Bessel's correction), as in Stiennon et al. 2020's reference code.

    Args:
        reduce_sum (*optional*): ``f(tensor) -> tensor`` summing a tensor over all processes (e.g.
            ``lambda t: accelerator.reduce(t, "sum")``), so the mean and variance are those of the global batch;
            None: this process's batch only.
    """
    reduce_sum = reduce_sum or (lambda t: t)
    mask = mask.to(values.dtype)
    n = reduce_sum((mask.sum()).detach().clone())
    mean = reduce_sum((values * mask).sum().detach().clone()) / n.clamp(min=1)
    centered = values - mean
    variance = reduce_sum((centered**2 * mask).sum().detach().clone()) / (n - 1).clamp(min=1)
    whitened = centered * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask_after_eos(responses: torch.Tensor, eos_token_id: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of the valid tokens of each response: everything up to and including its first EOS.

    Args:
        responses (`torch.LongTensor` of shape `(B, R)`): generated token ids.
        eos_token_id (`int` or `list[int]`): end-of-turn token id(s).

    Returns:
        `(mask, has_eos)`: `mask` `(B, R)` bool, True on valid tokens; `has_eos` `(B,)` bool.
    """
    eos_ids = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                           device=responses.device)
    is_eos = torch.isin(responses, eos_ids)
    has_eos = is_eos.any(dim=1)
    positions = torch.arange(responses.shape[1], device=responses.device).expand_as(responses)
    # index of the first EOS, or R-1 (keep everything) when there is none
    first_eos = torch.where(is_eos, positions, responses.shape[1]).min(dim=1).values.clamp(max=responses.shape[1] - 1)
    mask = positions <= first_eos.unsqueeze(1)
    return mask, has_eos


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from pi, shape `(B, R)`, in nats.

    ``k1`` = log pi - log pi_ref: unbiased, can be negative; its sum over a response is the unbiased estimate of
    the sequence KL, which is why it is the default in the per-token reward (Ziegler et al. 2019; the quantity
    PPO's KL penalty and the adaptive controller target). ``k3`` = (r - 1) - log r with r = pi_ref / pi:
    unbiased, always >= 0, lower variance, but ``r - 1 = expm1(-log_ratio)`` explodes where pi << pi_ref (a
    log-ratio of -60 gives ~1e26), so ``k3`` is clamped to [-10, 10] as OpenRLHF's ``compute_approx_kl`` does.

    Source: J. Schulman, "Approximating KL Divergence", 2020, http://joschu.net/blog/kl-approx.html; the clamp:
    OpenRLHF, ``openrlhf/models/utils.py::compute_approx_kl``.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return (torch.expm1(-log_ratio) + log_ratio).clamp(min=-K3_CLAMP, max=K3_CLAMP)
    raise ValueError(f"Unknown KL estimator {estimator!r}; use 'k1' or 'k3'.")


def compute_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
    step_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token RLHF rewards: a KL penalty on every response token and the score on the last valid one.

    Args:
        scores (`torch.Tensor` of shape `(B,)`): sequence-level scores (reward model output or verifiable reward).
        logprobs, ref_logprobs (`torch.Tensor` of shape `(B, R)`): log-probs (nats) of the sampled tokens under
            the policy at rollout time and under the reference model.
        mask (`torch.Tensor` of shape `(B, R)`): 1 on valid response tokens (a prefix of each row, non-empty).
        kl_coef (`float`): beta.
        kl_estimator (`str`): see `per_token_kl`.
        step_rewards (`torch.Tensor` of shape `(B, R)`, *optional*): process rewards placed on the token that
            completes each step (e.g. `step_reward_tensor`), added as they are.

    Returns:
        `(rewards, kl)`, both `(B, R)`: ``rewards[b, t] = -beta * kl[b, t] + [t == last_b] * scores[b]
        + step_rewards[b, t]``, zero on masked positions; ``kl`` the per-token KL estimate (zero on masked
        positions).

    Source: Ziegler et al. 2019, https://arxiv.org/abs/1909.08593, Eq. 2; Ouyang et al. 2022 (InstructGPT),
    https://arxiv.org/abs/2203.02155, Eq. 2 (per-token form of the KL-penalised objective).
    """
    mask = mask.to(logprobs.dtype)
    kl = per_token_kl(logprobs, ref_logprobs, kl_estimator) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    if step_rewards is not None:
        rewards = rewards + step_rewards.to(rewards.dtype)
    return rewards * mask, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where ``V`` is zero
    after the last valid token (the episode ends at EOS or at the length limit).

    Args:
        rewards (`torch.Tensor` of shape `(B, R)`): per-token rewards (see `compute_rewards`).
        values (`torch.Tensor` of shape `(B, R)`): value of the state before each response token.
        mask (`torch.Tensor` of shape `(B, R)`): 1 on valid tokens (a prefix of each row).
        gamma (`float`): discount; lam (`float`): GAE lambda.

    Returns:
        `(advantages, returns)`, both `(B, R)`, zero on masked positions; ``returns = advantages + values``.

    Source: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation", https://arxiv.org/abs/1506.02438, Eq. 16.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[1]
    advantages_reversed = []
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = (advantages + values) * mask
    return advantages, returns


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                            reduce_sum=None) -> torch.Tensor:
    """REINFORCE++ advantages: the (discounted) reward-to-go, normalised over the (global) batch.

    ``A_t = sum_{i >= t} gamma^(i - t) r_i`` over the valid tokens of each response; with `compute_rewards`'
    per-token reward and ``gamma = 1`` (the paper's setting) this is ``score - beta * sum_{i >= t} KL_i``. Then
    ``(A - mean) / std`` over every valid token of the batch (of all processes with ``reduce_sum``).

    Args:
        rewards (`torch.Tensor` of shape `(B, R)`): per-token rewards (KL penalty + score on the last token).
        mask (`torch.Tensor` of shape `(B, R)`): 1 on response tokens, 0 after the end.
        gamma (`float`): discount factor (``--gamma``), 1.0 in the paper.
        reduce_sum (*optional*): cross-process sum, see `masked_whiten`.

    Returns:
        `torch.Tensor` of shape `(B, R)`, zero on masked positions.

    Source: REINFORCE++, Hu et al. 2025, https://huggingface.co/papers/2501.03262, Sec. 3 (token-level KL
    penalty in the reward; advantage normalisation over the global batch).
    """
    returns_to_go, _ = compute_gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return masked_whiten(returns_to_go, mask, reduce_sum=reduce_sum)


def group_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Scores minus the mean score of their group: the baseline of REINFORCE++-baseline.

    Rows come in consecutive groups of ``group_size`` responses to one prompt; each score has its group's mean
    subtracted, so a group whose responses all score the same gives no learning signal, and a prompt's right
    answers are pushed up only relative to its wrong ones (what the prompt's difficulty does not explain).

    Args:
        scores (`torch.Tensor` of shape `(B,)`): sequence-level scores, ``B`` a multiple of ``group_size``.
        group_size (`int`): responses per prompt (``--num_samples_per_prompt``), >= 1; 1 returns zeros.

    Returns:
        `torch.Tensor` of shape `(B,)`.

    Raises:
        ValueError: when ``B`` is not a multiple of ``group_size``.

    Source: REINFORCE++, Hu et al. 2025, https://huggingface.co/papers/2501.03262, Sec. 3 ("REINFORCE++-Baseline":
    the group-mean baseline, then the global-batch normalisation of `reinforce_pp_advantages`); the group mean as
    a baseline is GRPO's (Shao et al. 2024, Eq. 3) without its division by the group's standard deviation.
    """
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(f"group_baseline: {scores.shape[0]} scores do not split into groups of {group_size}.")
    grouped = scores.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)


def _token_mean(values: torch.Tensor, mask: torch.Tensor, num_tokens: float | torch.Tensor | None) -> torch.Tensor:
    if num_tokens is None:
        return masked_mean(values, mask)
    return (values * mask.to(values.dtype)).sum() / num_tokens


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float,
    num_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate policy loss, averaged over valid tokens.

    ``L = mean_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps))`` with ``rho_t = exp(logp_t - old_logp_t)``.

    Args:
        logprobs (`torch.Tensor` of shape `(B, R)`): current policy log-probs of the rollout tokens (with grad).
        old_logprobs (`torch.Tensor` of shape `(B, R)`): log-probs at rollout time.
        advantages (`torch.Tensor` of shape `(B, R)`): (whitened) advantages.
        mask (`torch.Tensor` of shape `(B, R)`): 1 on valid tokens.
        cliprange (`float`): epsilon.
        num_tokens (*optional*): the normaliser: the token count of the whole batch this micro-batch is part of
            (the sum of the per-token losses is divided by it), so micro-batches of different lengths weigh by
            their tokens. None: this batch's valid tokens (a plain masked mean).

    Returns:
        `(loss, stats)`: scalar loss; stats ``clipfrac`` (share of tokens where the clipped term is active),
        ``approxkl`` (``0.5 * mean (logp - old_logp)^2``), ``ratio`` (mean rho), all scalars.

    Source: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", https://arxiv.org/abs/1707.06347,
    Eq. 7 (negated, to minimise).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    losses_unclipped = -advantages * ratio
    losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = _token_mean(torch.maximum(losses_unclipped, losses_clipped), mask, num_tokens)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((losses_clipped > losses_unclipped).float(), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float,
    num_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, averaged over valid tokens.

    ``L = 0.5 * mean_t max((V_t - G_t)^2, (clip(V_t, V_old - eps_v, V_old + eps_v) - G_t)^2)``.

    Args:
        values (`torch.Tensor` of shape `(B, R)`): current value predictions (with grad).
        old_values (`torch.Tensor` of shape `(B, R)`): predictions at rollout time.
        returns (`torch.Tensor` of shape `(B, R)`): GAE returns.
        mask (`torch.Tensor` of shape `(B, R)`): 1 on valid tokens.
        cliprange_value (`float`): eps_v.
        num_tokens (*optional*): the normaliser, as in `ppo_policy_loss`.

    Returns:
        `(loss, stats)`: scalar loss; stats ``clipfrac`` and ``error`` (mean squared error of the unclipped
        prediction), scalars.

    Source: the clipped value objective of OpenAI baselines' PPO2 (Dhariwal et al. 2017), as used for RLHF by
    Ziegler et al. 2019 and analysed in Huang et al. 2024, https://huggingface.co/papers/2403.17031.
    """
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    losses_unclipped = (values - returns) ** 2
    losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * _token_mean(torch.maximum(losses_unclipped, losses_clipped), mask, num_tokens)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((losses_clipped > losses_unclipped).float(), mask),
            "error": masked_mean(losses_unclipped, mask),
        }
    return loss, stats


class AdaptiveKLController:
    """Proportional controller of beta towards a target KL.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n / horizon)`` after ``n`` episodes.

    Source: Ziegler et al. 2019, https://arxiv.org/abs/1909.08593, Sec. 2.2.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class FixedKLController:
    """A constant beta (the controller interface of `AdaptiveKLController`)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------
# TRPO: natural gradient by conjugate gradient, KL-bounded backtracking line search (Schulman et al. 2015)
# ---------------------------------------------------------------------------------------------------------

def flat_grad(output: torch.Tensor, params, create_graph: bool = False, retain_graph: bool | None = None,
              ) -> torch.Tensor:
    """Gradient of the scalar ``output`` with respect to ``params`` (a sequence of tensors), flattened into one
    vector of shape `(P,)` (P = total number of elements); a parameter ``output`` does not depend on gets zeros."""
    params = list(params)
    grads = torch.autograd.grad(output, params, create_graph=create_graph, retain_graph=retain_graph,
                                allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)])


def fisher_vector_product(kl: torch.Tensor, params, damping: float = 0.1):
    """``v -> (F + damping * I) v``, with F the Hessian of the mean KL(pi_old || pi_theta) at theta = theta_old.

    At theta_old the KL's Hessian is the Fisher information matrix of the policy, so F v is the double-backward
    product ``d/dtheta (dKL/dtheta . v)`` and F is never formed (P x P would not fit for an LM; with LoRA, P is the
    adapter's parameters). dKL/dtheta is taken once, with its graph kept, so the product can be called once per
    conjugate-gradient iteration.

    Args:
        kl (`torch.Tensor`, scalar): the mean KL between the rollout policy (detached) and the current one, built
            with a graph to ``params``.
        params: the trained parameters (P elements in all).
        damping (`float`): Tikhonov damping added to F (keeps conjugate gradient stable where F is near singular).

    Returns:
        ``product(v: (P,)) -> (P,)``.

    Source: Schulman et al. 2015, "Trust Region Policy Optimization", https://arxiv.org/abs/1502.05477, Appendix C
    (the Fisher-vector product via the KL's Hessian); damping as in OpenAI baselines' TRPO (``cg_damping``).
    """
    params = list(params)
    grad = flat_grad(kl, params, create_graph=True)

    def product(vector: torch.Tensor) -> torch.Tensor:
        return flat_grad((grad * vector.detach()).sum(), params, retain_graph=True) + damping * vector

    return product


def conjugate_gradient(matrix_vector_product, b: torch.Tensor, iterations: int = 10,
                       residual_tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve ``A x = b`` for a symmetric positive-definite A given only ``v -> A v``.

    Args:
        matrix_vector_product: ``f(v: (P,)) -> (P,)``, e.g. `fisher_vector_product` of the policy's KL.
        b (`torch.Tensor` of shape `(P,)`): the right-hand side (TRPO: the policy gradient g).
        iterations (`int`): at most this many iterations (P of them solve a P x P system exactly in exact
            arithmetic; TRPO uses 10).
        residual_tol (`float`): stop once the squared residual norm ``r . r`` is below it.

    Returns:
        `torch.Tensor` of shape `(P,)`: x, starting from 0.

    Source: Hestenes & Stiefel 1952; as used by Schulman et al. 2015, Appendix C (10 iterations).
    """
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - A x with x = 0
    d = b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr < residual_tol:
            break
        ad = matrix_vector_product(d)
        alpha = rr / (d @ ad)
        x = x + alpha * d
        r = r - alpha * ad
        rr_new = r @ r
        d = r + (rr_new / rr) * d
        rr = rr_new
    return x


def trust_region_step(direction: torch.Tensor, fisher_direction: torch.Tensor, max_kl: float) -> torch.Tensor:
    """Scale the natural-gradient direction s = F^-1 g to the trust region's edge: ``beta * s`` with
    ``beta = sqrt(2 * max_kl / (s . F s))``, the largest step whose quadratic KL model ``0.5 * (beta s) F (beta s)``
    equals ``max_kl``.

    Args:
        direction (`torch.Tensor` of shape `(P,)`): s (from `conjugate_gradient`).
        fisher_direction (`torch.Tensor` of shape `(P,)`): F s.
        max_kl (`float`): delta, the KL bound in nats (> 0).

    Returns:
        `torch.Tensor` of shape `(P,)`: the full step.

    Raises:
        ValueError: when ``max_kl <= 0`` or ``s . F s <= 0`` (F is not positive definite along s: raise the damping).

    Source: Schulman et al. 2015, Appendix C ("beta = sqrt(2 delta / s^T A s)").
    """
    if max_kl <= 0:
        raise ValueError(f"trust_region_step: max_kl={max_kl} must be > 0 (a KL bound in nats, e.g. 0.01).")
    shs = direction @ fisher_direction
    if shs <= 0:
        raise ValueError(f"trust_region_step: s . F s = {shs.item():.3g} <= 0: the Fisher-vector product is not "
                         "positive definite along the step; raise the damping.")
    return torch.sqrt(2 * max_kl / shs) * direction


def backtracking_line_search(evaluate, full_step: torch.Tensor, expected_improvement: float, max_kl: float,
                             max_backtracks: int = 10, backtrack_ratio: float = 0.5,
                             accept_ratio: float = 0.1) -> tuple[torch.Tensor | None, dict]:
    """TRPO's line search: the largest ``backtrack_ratio**k * full_step`` (k = 0, 1, ...) whose exact KL is within
    ``max_kl`` and whose surrogate improvement is positive and at least ``accept_ratio`` times the linear model's.

    Args:
        evaluate: ``f(step: (P,)) -> (improvement, kl)``: the surrogate objective's improvement L(theta + step) -
            L(theta) (the higher the better) and the mean KL(pi_theta || pi_theta+step) in nats, both floats,
            measured exactly (the parameters are moved, evaluated and moved back by the caller).
        full_step (`torch.Tensor` of shape `(P,)`): from `trust_region_step`.
        expected_improvement (`float`): g . full_step, the first-order improvement of the full step (> 0).
        max_kl (`float`): delta, nats.

    Returns:
        `(step, info)`: the accepted step, or None when no fraction passes (the update is skipped: the policy is
        left where it is); ``info`` has ``fraction`` (0.0 when rejected), ``improvement``, ``kl`` and ``backtracks``
        (of the accepted or the last tried step).

    Source: Schulman et al. 2015, Sec. 6 and Appendix C ("we use a line search ... the KL constraint is enforced
    and the surrogate improves"); constants as OpenAI baselines' TRPO (10 halvings, accept ratio 0.1).
    """
    info = {"fraction": 0.0, "improvement": 0.0, "kl": 0.0, "backtracks": 0}
    for k in range(max_backtracks):
        fraction = backtrack_ratio**k
        improvement, kl = evaluate(fraction * full_step)
        info.update(improvement=float(improvement), kl=float(kl), backtracks=k)
        expected = expected_improvement * fraction
        if kl <= max_kl and improvement > 0 and improvement >= accept_ratio * expected:
            info["fraction"] = fraction
            return fraction * full_step, info
    return None, info
