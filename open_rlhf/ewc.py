"""Elastic weight consolidation (EWC): a quadratic pull of the trained parameters towards the input policy's,
weighted by how much each parameter mattered to the input policy's own data (its diagonal Fisher information).

``penalty(theta) = lambda / 2 * sum_i F_i * (theta_i - theta*_i)^2`` with theta* the input policy's parameters and
F the diagonal of the Fisher information on the input policy's data, estimated as the mean squared gradient of
the per-example negative log-likelihood (the "empirical Fisher").

Source: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks",
https://arxiv.org/abs/1612.00796, Eq. 3 (the penalty) and its Methods (the diagonal Fisher).

An optional regulariser of the SFT, DPO (IPO, SimPO) and KTO stages (``--ewc_lambda``, ``--ewc_fisher_batches``,
issue 14; the trainer hook and the stages' Fisher data are in `open_rlhf.trainers.ewc`), so that a
self-improvement round keeps what the previous policy could do. Only parameters with ``requires_grad`` are
anchored (with LoRA: the adapter's).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def diagonal_fisher(model: torch.nn.Module, batches: Iterable[dict], loss_fn=None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of ``model`` on ``batches``: per trainable parameter, the mean over batches of
    the squared gradient of the batch's loss.

    Args:
        model: a model whose forward takes the batch's keys (e.g. ``input_ids``, ``attention_mask``, ``labels``) and
            returns an output with ``.loss`` (a causal LM with labels: the mean token NLL, nats).
        batches: dicts of tensors; one example per batch gives the per-example Fisher of the paper, larger batches
            a cheaper, lower-variance-per-step estimate of the same diagonal.
        loss_fn (*optional*): ``f(model, batch) -> scalar loss`` instead of ``model(**batch).loss``.

    Returns:
        `dict[str, torch.Tensor]`: parameter name -> Fisher diagonal of the parameter's shape (float32, >= 0).

    Raises:
        ValueError: when ``batches`` is empty or the model has no trainable parameter.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("diagonal_fisher: the model has no trainable parameter (requires_grad); nothing to anchor.")
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the policy itself
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().float() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count == 0:
        raise ValueError("diagonal_fisher: no batches; give at least one batch of the input policy's data.")
    return {n: f / count for n, f in fisher.items()}


class EWCPenalty:
    """``lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` over the anchored parameters (Kirkpatrick et al. 2017,
    Eq. 3).

    Args:
        model: the policy at the start of training (theta* is copied from it now).
        fisher (`dict[str, torch.Tensor]`): `diagonal_fisher` of that policy, same names and shapes.
        ewc_lambda (`float`): lambda (>= 0); the penalty is in the loss's units (nats) per unit of F * dtheta^2.

    Raises:
        ValueError: when ``ewc_lambda < 0``, or a Fisher entry names no trainable parameter or has another shape.
    """

    def __init__(self, model: torch.nn.Module, fisher: dict[str, torch.Tensor], ewc_lambda: float):
        if ewc_lambda < 0:
            raise ValueError(f"EWCPenalty: ewc_lambda={ewc_lambda} must be >= 0 (0 turns EWC off).")
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        for name, f in fisher.items():
            if name not in params or params[name].shape != f.shape:
                raise ValueError(f"EWCPenalty: Fisher entry {name!r} {tuple(f.shape)} matches no trainable parameter "
                                 "of the model; compute the Fisher on this model (diagonal_fisher).")
        self.ewc_lambda = ewc_lambda
        self.fisher = {n: f.detach() for n, f in fisher.items()}
        self.anchor = {n: params[n].detach().clone() for n in fisher}

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        """The penalty of ``model``'s current parameters: a scalar tensor with a graph to them."""
        params = dict(model.named_parameters())
        total = None
        for name, f in self.fisher.items():
            p = params[name]
            term = (f.to(p.device) * (p.float() - self.anchor[name].to(p.device).float()) ** 2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.ewc_lambda * total
