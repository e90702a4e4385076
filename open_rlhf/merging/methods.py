"""Merge methods as pure per-tensor functions.

Every function takes the tensors that one parameter name has in each input model (and in the base model, for
the task-vector methods) and returns the merged tensor. Nothing here knows about files, key names or layers:
`open_rlhf.merging.merge` calls these once per tensor name, which is what lets a merge stream tensor by tensor.

Conventions for every function:

* all inputs of one call have the same shape `(*S)` and dtype; the result has that shape and dtype;
* arithmetic runs in float32 (float64 when the inputs are float64) and is cast back once at the end, so bf16 and
  fp16 models lose no precision in intermediate sums;
* a *task vector* is `tau_i = theta_i - theta_base` (Ilharco et al. 2023), *density* is the fraction of task-vector
  entries kept (TIES' k, DARE's 1 - p), *weight* is a per-model coefficient, *lambda* scales the merged task vector.

TRL 1.16 has no merging; this module is our own code. mergekit 0.1.5 implements the same methods and is used as
an independent reference in ``tests/test_merging.py``; the few places where the defaults differ are noted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

Tensor = torch.Tensor

#: ``|cos(v0, v1)|`` above which SLERP falls back to linear interpolation (mergekit's default, too).
SLERP_DOT_THRESHOLD = 0.9995
DARE_RESCALE_MODES = ("density", "l1", "none")


def _work_dtype(tensor: Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _check_same(tensors: Sequence[Tensor], what: str = "tensors") -> None:
    if len(tensors) == 0:
        raise ValueError(f"Got no {what} to merge; pass at least one model.")
    first = tensors[0]
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape != first.shape:
            raise ValueError(f"{what}[{i}] has shape {tuple(t.shape)} but {what}[0] has {tuple(first.shape)}; "
                             "merged models must share one architecture.")
        if t.dtype != first.dtype:
            raise ValueError(f"{what}[{i}] has dtype {t.dtype} but {what}[0] has {first.dtype}; re-save the models "
                             "in one dtype before merging.")
    if not first.is_floating_point():
        raise ValueError(f"Can only merge floating-point tensors, got {first.dtype}.")


def _check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"Got {len(weights)} weights for {n} models; pass one weight per model.")
    return weights


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density={density} is outside (0, 1]; it is the fraction of task-vector entries kept.")


def linear(tensors: Sequence[Tensor], weights: Sequence[float] | None = None, normalize: bool = True) -> Tensor:
    """Weighted average of N models: the uniform soup when all weights are equal.

    ``theta = sum_i w_i theta_i / sum_i w_i`` (or without the division when ``normalize=False``).

    Args:
        tensors (sequence of `torch.Tensor`, each of shape `(*S)`): the tensor of one parameter in each model.
        weights (sequence of `float`, length N, *optional*): per-model weights; default all 1.
        normalize (`bool`): divide by the sum of the weights (mergekit's default, too).

    Returns:
        `torch.Tensor` of shape `(*S)` in the inputs' dtype.

    Raises:
        ValueError: when shapes or dtypes differ, the tensors are not floating point, the number of weights is
            not N, or ``normalize=True`` with weights summing to 0.

    Source: Model soups, Wortsman et al. 2022, https://huggingface.co/papers/2203.05482, Table 1 (uniform soup
        ``f(x, 1/k sum_i theta_i)``).
    """
    _check_same(tensors)
    weights = _check_weights(weights, len(tensors))
    dtype = _work_dtype(tensors[0])
    out = torch.zeros(tensors[0].shape, dtype=dtype)
    for tensor, weight in zip(tensors, weights, strict=True):
        out.add_(tensor.to(dtype), alpha=weight)
    if normalize:
        total = sum(weights)
        if abs(total) < 1e-12:
            raise ValueError(f"weights {weights} sum to 0; cannot normalize. Pass normalize=False or other weights.")
        out.div_(total)
    return out.to(tensors[0].dtype)


def task_vector(finetuned: Tensor, base: Tensor) -> Tensor:
    """``tau = theta_ft - theta_base`` in float32 (float64 for float64 inputs).

    Args:
        finetuned (`torch.Tensor` of shape `(*S)`): the fine-tuned model's tensor.
        base (`torch.Tensor` of shape `(*S)`): the base model's tensor, same dtype.

    Returns:
        `torch.Tensor` of shape `(*S)`, float32 (float64 for float64 inputs).

    Raises:
        ValueError: when shapes or dtypes differ.

    Source: Task arithmetic, Ilharco et al. 2023, https://huggingface.co/papers/2212.04089, §2 (task vectors).
    """
    _check_same([base, finetuned], "tensors (base, finetuned)")
    dtype = _work_dtype(base)
    return finetuned.to(dtype) - base.to(dtype)


def task_arithmetic(base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float] | None = None,
                    lambda_: float = 1.0) -> Tensor:
    """Add the (weighted) sum of task vectors to the base model.

    ``theta = theta_base + lambda * sum_i w_i (theta_i - theta_base)``.

    Args:
        base (`torch.Tensor` of shape `(*S)`): the base model's tensor.
        tensors (sequence of `torch.Tensor`, each `(*S)`): the fine-tuned models' tensors.
        weights (sequence of `float`, length N, *optional*): per-model weights; default all 1 (the paper).
        lambda_ (`float`): scaling of the summed task vector (the paper's lambda, tuned on held-out data).

    Returns:
        `torch.Tensor` of shape `(*S)` in the inputs' dtype.

    Raises:
        ValueError: when shapes or dtypes differ or the number of weights is not N.

    Source: Task arithmetic, Ilharco et al. 2023, https://huggingface.co/papers/2212.04089, §2
        (``theta_new = theta + lambda sum_i tau_i``).
    """
    _check_same([base, *tensors])
    weights = _check_weights(weights, len(tensors))
    merged = torch.zeros(base.shape, dtype=_work_dtype(base))
    for tensor, weight in zip(tensors, weights, strict=True):
        merged.add_(task_vector(tensor, base), alpha=weight)
    return (base.to(merged.dtype) + lambda_ * merged).to(base.dtype)


def trim_magnitude(tau: Tensor, density: float) -> Tensor:
    """Keep the ``k = max(1, floor(density * numel))`` largest-magnitude entries of a task vector, zero the rest.

    Args:
        tau (`torch.Tensor` of shape `(*S)`): a task vector.
        density (`float` in (0, 1]): fraction of entries kept; 1 returns ``tau`` unchanged.

    Returns:
        `torch.Tensor` of shape `(*S)`, same dtype as ``tau``.

    Raises:
        ValueError: when density is outside (0, 1].

    Source: TIES-Merging, Yadav et al. 2023, https://huggingface.co/papers/2306.01708, Algorithm 1 step 1 (Trim:
        keep the top-k% values by magnitude).
    """
    _check_density(density)
    if density >= 1.0 or tau.numel() == 0:
        return tau
    k = max(1, int(density * tau.numel()))
    flat = tau.reshape(-1)
    keep = torch.topk(flat.abs(), k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(tau.shape)


def dare_drop(tau: Tensor, density: float, generator: torch.Generator | None = None,
              rescale: str = "density") -> Tensor:
    """Drop each task-vector entry with probability ``p = 1 - density`` and rescale the survivors.

    ``m ~ Bernoulli(density)`` elementwise; ``tau_hat = m * tau / density`` (``rescale="density"``, the paper's
    ``1 / (1 - p)``). ``rescale="l1"`` instead matches the L1 norm of the original task vector (mergekit's
    default for its ``dare_*`` methods); ``"none"`` only masks.

    The mask is drawn as ``torch.bernoulli(torch.full_like(tau, density, dtype=float32), generator=generator)``,
    one draw per call; pass a seeded generator for a reproducible merge.

    Args:
        tau (`torch.Tensor` of shape `(*S)`): a task vector (float32 or float64).
        density (`float` in (0, 1]): keep probability ``1 - p``; 1 returns ``tau`` unchanged without drawing.
        generator (`torch.Generator`, *optional*): random source for the mask.
        rescale (`str`): one of ``"density"``, ``"l1"``, ``"none"``.

    Returns:
        `torch.Tensor` of shape `(*S)`, same dtype as ``tau``.

    Raises:
        ValueError: when density is outside (0, 1] or ``rescale`` is not one of the modes.

    Source: DARE, Yu et al. 2024 ("Language Models are Super Mario"), https://huggingface.co/papers/2311.03099,
        §3 (``m ~ Bernoulli(p)``, ``tau_tilde = (1 - m) * tau``, ``tau_hat = tau_tilde / (1 - p)``).
    """
    _check_density(density)
    if rescale not in DARE_RESCALE_MODES:
        raise ValueError(f"rescale={rescale!r} is not one of {DARE_RESCALE_MODES}.")
    if density >= 1.0 or tau.numel() == 0:
        return tau
    mask = torch.bernoulli(torch.full(tau.shape, density, dtype=torch.float32), generator=generator)
    dropped = tau * mask.to(tau.dtype)
    if rescale == "density":
        return dropped / density
    if rescale == "l1":
        before, after = tau.abs().sum(), dropped.abs().sum()
        # Same guard as mergekit: an all-zero (or fully dropped) tensor is returned as is.
        if before < 1e-7 or after < 1e-7:
            return dropped
        return dropped * (before / after)
    return dropped


def elect_sign(taus: Tensor) -> Tensor:
    """Elect one sign per entry: the sign of the summed (trimmed, weighted) task vectors.

    ``gamma = sgn(sum_i tau_i)``, with an exact 0 elected as +1 (as in mergekit; the paper leaves sgn(0) = 0,
    which differs only where every entry that would be averaged is 0 anyway or the sum cancels exactly).

    Args:
        taus (`torch.Tensor` of shape `(N, *S)`): stacked task vectors.

    Returns:
        `torch.Tensor` of shape `(*S)` with values in {-1, +1}, dtype of ``taus``.

    Source: TIES-Merging, Yadav et al. 2023, https://huggingface.co/papers/2306.01708, Algorithm 1 step 2
        (Elect: ``gamma_m = sgn(sum_t tau_hat_t)``).
    """
    return torch.where(taus.sum(dim=0) >= 0, 1.0, -1.0).to(taus.dtype)


def disjoint_mean(taus: Tensor, sign: Tensor, weights: Sequence[float] | None = None) -> Tensor:
    """Average, per entry, only the task vectors whose sign agrees with the elected sign.

    ``tau_m = sum_i w_i tau_i [sgn(tau_i) = gamma] / sum_i w_i [sgn(tau_i) = gamma]`` (0 where no model agrees;
    zero entries agree with nothing). ``taus`` must already be multiplied by the weights.

    Args:
        taus (`torch.Tensor` of shape `(N, *S)`): stacked weighted task vectors.
        sign (`torch.Tensor` of shape `(*S)`): elected sign from `elect_sign`.
        weights (sequence of `float`, length N, *optional*): the weights applied to ``taus``; default all 1.

    Returns:
        `torch.Tensor` of shape `(*S)`, dtype of ``taus``.

    Source: TIES-Merging, Yadav et al. 2023, https://huggingface.co/papers/2306.01708, Algorithm 1 step 3
        (Disjoint merge: ``tau_m^p = 1/|A^p| sum_{t in A^p} tau_hat_t^p``, ``A^p = {t : sgn(tau_hat_t^p) =
        gamma_m^p}``).
    """
    weights = _check_weights(weights, taus.shape[0])
    agree = (torch.sign(taus) == sign).to(taus.dtype)
    w = torch.tensor(weights, dtype=taus.dtype).reshape(-1, *([1] * (taus.dim() - 1)))
    numerator = (taus * agree).sum(dim=0)
    denominator = (w * agree).sum(dim=0)
    denominator[denominator == 0] = 1.0
    return numerator / denominator


def _sign_consensus(base: Tensor, taus: list[Tensor], weights: list[float], lambda_: float,
                    disjoint: bool) -> Tensor:
    stacked = torch.stack([tau * w for tau, w in zip(taus, weights, strict=True)])  # (N, *S)
    if disjoint:
        merged = disjoint_mean(stacked, elect_sign(stacked), weights)
    else:
        merged = stacked.sum(dim=0)
    return (base.to(merged.dtype) + lambda_ * merged).to(base.dtype)


def ties(base: Tensor, tensors: Sequence[Tensor], density: float, weights: Sequence[float] | None = None,
         lambda_: float = 1.0) -> Tensor:
    """TIES-Merging: trim each task vector to its top-``density`` magnitudes, elect signs, disjoint mean.

    ``tau_hat_i = trim(theta_i - theta_base)``; ``gamma = sgn(sum_i w_i tau_hat_i)``;
    ``theta = theta_base + lambda * disjoint_mean(w_i tau_hat_i, gamma)``.

    Args:
        base (`torch.Tensor` of shape `(*S)`): the base model's tensor.
        tensors (sequence of `torch.Tensor`, each `(*S)`): the fine-tuned models' tensors.
        density (`float` in (0, 1]): fraction of each task vector kept by magnitude (the paper's k, e.g. 0.2).
        weights (sequence of `float`, length N, *optional*): per-model weights; default all 1 (the paper).
        lambda_ (`float`): scaling of the merged task vector (the paper's lambda, 1 by default there).

    Returns:
        `torch.Tensor` of shape `(*S)` in the inputs' dtype.

    Raises:
        ValueError: when shapes or dtypes differ, density is outside (0, 1] or the number of weights is not N.

    Source: TIES-Merging, Yadav et al. 2023, https://huggingface.co/papers/2306.01708, Algorithm 1
        (``theta_m = theta_init + lambda * tau_m``).
    """
    _check_same([base, *tensors])
    weights = _check_weights(weights, len(tensors))
    taus = [trim_magnitude(task_vector(t, base), density) for t in tensors]
    return _sign_consensus(base, taus, weights, lambda_, disjoint=True)


def dare(base: Tensor, tensors: Sequence[Tensor], density: float, weights: Sequence[float] | None = None,
         lambda_: float = 1.0, combine: str = "linear", generator: torch.Generator | None = None,
         rescale: str = "density") -> Tensor:
    """DARE: drop-and-rescale each task vector, then combine them linearly or with TIES' sign election.

    ``tau_hat_i = dare_drop(theta_i - theta_base)`` (one mask draw per model, in input order), then
    ``combine="linear"``: ``theta = theta_base + lambda * sum_i w_i tau_hat_i``;
    ``combine="ties"``: ``theta = theta_base + lambda * disjoint_mean(w_i tau_hat_i, sgn(sum_i w_i tau_hat_i))``
    (mergekit's ``dare_ties`` skips the division of the disjoint mean by default; pass ``normalize: true`` there
    to get this).

    Args:
        base (`torch.Tensor` of shape `(*S)`): the base model's tensor.
        tensors (sequence of `torch.Tensor`, each `(*S)`): the fine-tuned models' tensors.
        density (`float` in (0, 1]): keep probability ``1 - p`` (the paper drops p = 0.9 and more).
        weights (sequence of `float`, length N, *optional*): per-model weights; default all 1.
        lambda_ (`float`): scaling of the merged task vector.
        combine (`str`): ``"linear"`` (task arithmetic) or ``"ties"`` (sign election + disjoint mean).
        generator (`torch.Generator`, *optional*): random source for the masks; seed it for a reproducible merge.
        rescale (`str`): see `dare_drop`.

    Returns:
        `torch.Tensor` of shape `(*S)` in the inputs' dtype.

    Raises:
        ValueError: when shapes or dtypes differ, density is outside (0, 1], the number of weights is not N, or
            ``combine``/``rescale`` is unknown.

    Source: DARE, Yu et al. 2024, https://huggingface.co/papers/2311.03099, §3 (DARE) and §4 (DARE as a plug-in
        for task arithmetic and TIES-Merging).
    """
    if combine not in ("linear", "ties"):
        raise ValueError(f"combine={combine!r} must be 'linear' or 'ties'.")
    _check_same([base, *tensors])
    weights = _check_weights(weights, len(tensors))
    taus = [dare_drop(task_vector(t, base), density, generator=generator, rescale=rescale) for t in tensors]
    return _sign_consensus(base, taus, weights, lambda_, disjoint=combine == "ties")


def slerp(t: float, v0: Tensor, v1: Tensor, dot_threshold: float = SLERP_DOT_THRESHOLD, eps: float = 1e-8) -> Tensor:
    """Spherical linear interpolation between two models' tensors, each flattened to one vector.

    ``Omega = arccos(<v0/|v0|, v1/|v1|>)``; ``slerp = sin((1-t) Omega)/sin(Omega) v0 + sin(t Omega)/sin(Omega) v1``.
    The angle comes from the normalized vectors, the coefficients multiply the raw ones (as in mergekit).
    Colinear fallback: when ``|cos Omega| > dot_threshold`` (parallel or antiparallel, where ``sin Omega`` ~ 0)
    the result is the linear interpolation ``(1 - t) v0 + t v1``. A near-zero vector counts with norm 1.

    Args:
        t (`float`): interpolation factor; 0 gives ``v0``, 1 gives ``v1``.
        v0 (`torch.Tensor` of shape `(*S)`): the first model's tensor.
        v1 (`torch.Tensor` of shape `(*S)`): the second model's tensor, same dtype.
        dot_threshold (`float`): colinearity threshold on the cosine.
        eps (`float`): norms below this count as 1.

    Returns:
        `torch.Tensor` of shape `(*S)` in the inputs' dtype.

    Raises:
        ValueError: when shapes or dtypes differ.

    Source: Shoemake 1985, "Animating rotation with quaternion curves" (SIGGRAPH), the slerp formula
        ``Slerp(q1, q2; u) = sin((1-u) Omega)/sin Omega q1 + sin(u Omega)/sin Omega q2``.
    """
    _check_same([v0, v1])
    dtype = _work_dtype(v0)
    a, b = v0.reshape(-1).to(dtype), v1.reshape(-1).to(dtype)
    if a.numel() == 0:
        return v0
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    norm_a = norm_a if norm_a > eps else torch.ones_like(norm_a)
    norm_b = norm_b if norm_b > eps else torch.ones_like(norm_b)
    dot = float(((a / norm_a) * (b / norm_b)).sum().clamp(-1.0, 1.0))
    if abs(dot) > dot_threshold:
        out = (1.0 - t) * a + t * b
    else:
        theta = math.acos(dot)
        sin_theta = math.sin(theta)
        out = (math.sin((1.0 - t) * theta) / sin_theta) * a + (math.sin(t * theta) / sin_theta) * b
    return out.reshape(v0.shape).to(v0.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Layer-wise schedules
# ----------------------------------------------------------------------------------------------------------------

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_EMBEDDING_MARKERS = ("embed", "wte", "wpe")


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a parameter name (``model.layers.7.mlp.up_proj.weight`` -> 7), else None."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def layer_position(name: str, num_layers: int) -> float:
    """Where a tensor sits in the network, in [0, 1]: layer i of L at ``i / (L - 1)``.

    Tensors outside the decoder layers sit at the ends: embeddings (names containing ``embed``, ``wte``,
    ``wpe``) at 0, everything else (final norm, ``lm_head``, a ``score`` head) at 1.

    Args:
        name (`str`): a state-dict key.
        num_layers (`int`): number of decoder layers of the model (``config.num_hidden_layers``).

    Returns:
        `float` in [0, 1].
    """
    index = layer_index(name)
    if index is None:
        return 0.0 if any(m in name for m in _EMBEDDING_MARKERS) else 1.0
    return index / (num_layers - 1) if num_layers > 1 else 0.0


def schedule_value(schedule: float | Sequence[float], position: float) -> float:
    """Piecewise-linear value of a layer-wise schedule at a position in [0, 1].

    A schedule of M anchor values places them evenly on [0, 1] (first at the embeddings, last at the output) and
    interpolates linearly between them; one value is a constant. E.g. ``[0.0, 1.0]`` for SLERP's ``t`` takes
    the first model's early layers and the second model's late layers, with a linear ramp between.

    Args:
        schedule (`float` or sequence of `float`): the anchors.
        position (`float` in [0, 1]): from `layer_position`.

    Returns:
        `float`.

    Raises:
        ValueError: when the schedule is empty.
    """
    if isinstance(schedule, (int, float)):
        return float(schedule)
    anchors = [float(v) for v in schedule]
    if not anchors:
        raise ValueError("An empty layer schedule; pass one value (a constant) or several anchors.")
    if len(anchors) == 1:
        return anchors[0]
    x = min(max(position, 0.0), 1.0) * (len(anchors) - 1)
    lo = min(int(math.floor(x)), len(anchors) - 2)
    frac = x - lo
    return anchors[lo] * (1.0 - frac) + anchors[lo + 1] * frac
