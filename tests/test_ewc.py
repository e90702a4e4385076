"""Elastic weight consolidation (open_rlhf.ewc): the penalty and the diagonal Fisher against hand-computed values."""

import pytest
import torch

from open_rlhf.ewc import EWCPenalty, diagonal_fisher


class Line(torch.nn.Module):
    """y = w * x + b with a squared-error 'loss' 0.5 (y - t)^2: gradients w.r.t. w and b are (y - t) x and (y - t)."""

    def __init__(self, w=1.0, b=0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([w]))
        self.b = torch.nn.Parameter(torch.tensor([b]))

    def forward(self, x, t):
        y = self.w * x + self.b
        return type("Out", (), {"loss": (0.5 * (y - t) ** 2).sum()})()


def test_diagonal_fisher_is_the_mean_squared_gradient():
    """w = 1, b = 0. Batch 1: x = 2, t = 1 -> y - t = 1, grads (2, 1). Batch 2: x = 1, t = 3 -> y - t = -2, grads
    (-2, -2). Mean squares: w (4 + 4) / 2 = 4, b (1 + 4) / 2 = 2.5."""
    model = Line()
    fisher = diagonal_fisher(model, [{"x": torch.tensor([2.0]), "t": torch.tensor([1.0])},
                                     {"x": torch.tensor([1.0]), "t": torch.tensor([3.0])}])
    assert fisher["w"].tolist() == [4.0] and fisher["b"].tolist() == [2.5]
    assert model.w.grad is None  # no gradient left behind for the optimizer
    with pytest.raises(ValueError, match="no batches"):
        diagonal_fisher(model, [])


def test_ewc_penalty_pulls_towards_the_anchor_weighted_by_the_fisher():
    """F = (4, 2.5), lambda = 2; after moving w by 0.5 and b by -1: 2 / 2 * (4 * 0.25 + 2.5 * 1) = 3.5, and the
    gradient w.r.t. w is lambda * F_w * dw = 2 * 4 * 0.5 = 4."""
    model = Line()
    penalty = EWCPenalty(model, {"w": torch.tensor([4.0]), "b": torch.tensor([2.5])}, ewc_lambda=2.0)
    assert penalty(model).item() == 0.0  # at the anchor
    with torch.no_grad():
        model.w += 0.5
        model.b -= 1.0
    value = penalty(model)
    assert value.item() == pytest.approx(3.5)
    value.backward()
    assert model.w.grad.item() == pytest.approx(4.0) and model.b.grad.item() == pytest.approx(-5.0)
    model.b.requires_grad_(False)  # a frozen parameter cannot be anchored
    with pytest.raises(ValueError, match="'b'"):
        EWCPenalty(model, {"b": torch.tensor([1.0])}, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        EWCPenalty(model, {}, -1.0)
