"""TRPO's pure pieces (open_rlhf.rl_math) against hand-computed values: conjugate gradient on a known quadratic,
the Fisher-vector product of a KL, the trust-region step size and the KL-bounded line search."""

import math

import pytest
import torch

from open_rlhf.rl_math import (
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product,
    flat_grad,
    trust_region_step,
)

A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)  # symmetric, eigenvalues > 0


def test_conjugate_gradient_solves_a_known_quadratic_in_p_steps():
    """min 0.5 x A x - b x has its minimum at A x = b; CG on a 3 x 3 system is exact after 3 iterations.
    By hand, b = (1, 2, 3): x = (2/9, 1/9, 13/9) (4*2/9 + 1/9 = 1, 2/9 + 3/9 + 13/9 = 2, 1/9 + 26/9 = 3)."""
    b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, iterations=3)
    torch.testing.assert_close(x, torch.tensor([2 / 9, 1 / 9, 13 / 9], dtype=torch.float64))
    one = conjugate_gradient(lambda v: A @ v, b, iterations=1)  # one step: the steepest-descent point
    alpha = (b @ b) / (b @ A @ b)  # 14 / 50
    torch.testing.assert_close(one, alpha * b)
    assert conjugate_gradient(lambda v: A @ v, torch.zeros(3, dtype=torch.float64)).abs().sum() == 0  # b = 0: x = 0


def test_fisher_vector_product_is_the_kl_hessian_times_v():
    """A quadratic 'KL' 0.5 (t - t0) A (t - t0) over two parameter tensors has Hessian A: F v = A v + damping v."""
    w = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    theta = torch.cat([w, c])
    delta = theta - torch.tensor([0.1, 0.0, 0.2], dtype=torch.float64)
    kl = 0.5 * delta @ A @ delta
    v = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(flat_grad(kl, [w, c], retain_graph=True), (A @ delta).detach())
    product = fisher_vector_product(kl, [w, c], damping=0.1)
    torch.testing.assert_close(product(v), A @ v + 0.1 * v)
    torch.testing.assert_close(product(2 * v), 2 * (A @ v + 0.1 * v))  # callable again (once per CG iteration)
    x = conjugate_gradient(product, v, iterations=3)  # the natural-gradient direction (A + 0.1 I)^-1 v
    torch.testing.assert_close((A + 0.1 * torch.eye(3, dtype=torch.float64)) @ x, v)


def test_fisher_of_a_categorical_policy_at_its_old_logits():
    """KL(p_old || softmax(z)) at z = z_old has Hessian diag(p) - p p^T (the Fisher matrix in logits). With
    z_old = (0, ln 2): p = (1/3, 2/3), F = [[2/9, -2/9], [-2/9, 2/9]], so F (1, 0) = (2/9, -2/9)."""
    z_old = torch.tensor([0.0, math.log(2.0)], dtype=torch.float64)
    z = z_old.clone().requires_grad_(True)
    p_old = torch.softmax(z_old, -1)
    kl = (p_old * (torch.log(p_old) - torch.log_softmax(z, -1))).sum()
    fv = fisher_vector_product(kl, [z], damping=0.0)(torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(fv, torch.tensor([2 / 9, -2 / 9], dtype=torch.float64))


def test_trust_region_step_reaches_the_kl_bound_of_the_quadratic_model():
    """s = (1, 0), F s = (2, 0): s F s = 2, beta = sqrt(2 * 0.01 / 2) = 0.1; the model KL 0.5 * beta^2 * 2 = 0.01."""
    step = trust_region_step(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]), max_kl=0.01)
    torch.testing.assert_close(step, torch.tensor([0.1, 0.0]))
    with pytest.raises(ValueError, match="max_kl"):
        trust_region_step(torch.tensor([1.0]), torch.tensor([2.0]), max_kl=0.0)
    with pytest.raises(ValueError, match="damping"):
        trust_region_step(torch.tensor([1.0]), torch.tensor([-2.0]), max_kl=0.01)


def test_line_search_honours_the_kl_bound_and_the_improvement():
    """Exact KL = 4 * delta * f^2 for the fraction f of the full step: f = 1 gives 4 delta (rejected), f = 1/2 gives
    exactly delta (accepted after one backtrack). The improvement is linear, g . step = f."""
    max_kl, full = 0.01, torch.tensor([1.0, 1.0])
    tried = []

    def evaluate(step):
        f = step[0].item()
        tried.append(f)
        return f, 4 * max_kl * f**2

    step, info = backtracking_line_search(evaluate, full, expected_improvement=1.0, max_kl=max_kl)
    torch.testing.assert_close(step, 0.5 * full)
    assert tried == [1.0, 0.5] and info == {"fraction": 0.5, "improvement": 0.5, "kl": pytest.approx(max_kl),
                                            "backtracks": 1}

    # a surrogate that only gets worse: every fraction is tried, none accepted, the policy stays
    step, info = backtracking_line_search(lambda s: (-1.0, 0.0), full, 1.0, max_kl, max_backtracks=4)
    assert step is None and info["fraction"] == 0.0 and info["backtracks"] == 3
    # improving, within the bound, but by less than 10% of the linear model's prediction: rejected too
    step, _ = backtracking_line_search(lambda s: (0.05 * s[0].item(), 0.0), full, 1.0, max_kl, max_backtracks=3)
    assert step is None



def test_gauss_newton_fisher_is_positive_semidefinite_where_the_residual_form_is_not():
    """The trainer's Fisher: the Hessian of mean_t 0.5 (f_t(theta) - sg[f_t(theta)])^2 is J^T J / T (J the Jacobian
    of the per-token log-probs f), positive semi-definite at any theta. The Hessian of mean_t 0.5 (f_t - f_old_t)^2
    adds mean_t (f_t - f_old_t) Hess f_t, indefinite once f_old differs from f(theta) (rollout log-probs from a bf16
    forward; this made s . F s < 0 on the default model). By hand: f = (sin t1 + t2^2, t1 t2) at t = (0, 1),
    J = [[1, 2], [1, 0]], J^T J = [[2, 2], [2, 4]]; f_old = f + (0, 7) gives the residual -7 on f_2, whose Hessian is
    [[0, 1], [1, 0]], so H = ([[2, 2], [2, 4]] - 7 [[0, 1], [1, 0]]) / 2 and v = (1, 1): v H v = (2 + 4 + 4 - 14) / 2
    = -2."""
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)

    def f(x):
        return torch.stack([torch.sin(x[0]) + x[1] ** 2, x[0] * x[1]])

    jtj = torch.tensor([[2.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    v = torch.tensor([1.0, 1.0], dtype=torch.float64)
    out = f(t)
    gauss_newton = fisher_vector_product(0.5 * ((out - out.detach()) ** 2).mean(), [t], damping=0.0)
    torch.testing.assert_close(gauss_newton(v), jtj @ v / 2)
    assert v @ gauss_newton(v) == pytest.approx(5.0)  # (2 + 4 + 4) / 2
    old = f(t).detach() + torch.tensor([0.0, 7.0], dtype=torch.float64)
    residual_form = fisher_vector_product(0.5 * ((f(t) - old) ** 2).mean(), [t], damping=0.0)
    assert v @ residual_form(v) == pytest.approx(-2.0)
