"""The two clipping rules of train.py against hand-computed Adam steps (docs/replication.md §1.5: the authors'
Adam rows clip the lr-scaled step, Blocks' StepClipping; §6.7: gradient-norm clipping)."""
from __future__ import annotations

import math

import pytest
import torch

from zoneout.train import clipped_step

LR, BETAS, EPS = 1.0, (0.9, 0.999), 1e-8


def adam_by_hand(grads, threshold):
    """Plain-Python Adam (PyTorch's bias correction) with each step rescaled to L2 norm <= threshold
    afterwards; the moments are those of the unclipped gradients."""
    n = len(grads[0])
    p, m, v, updates = [0.0] * n, [0.0] * n, [0.0] * n, []
    for t, g in enumerate(grads, start=1):
        m = [BETAS[0] * mi + (1 - BETAS[0]) * gi for mi, gi in zip(m, g)]
        v = [BETAS[1] * vi + (1 - BETAS[1]) * gi * gi for vi, gi in zip(v, g)]
        step = [-LR * (mi / (1 - BETAS[0] ** t)) / (math.sqrt(vi / (1 - BETAS[1] ** t)) + EPS) for mi, vi in zip(m, v)]
        norm = math.sqrt(sum(s * s for s in step))
        scale = 1.0 if norm <= threshold else threshold / norm
        p = [pi + scale * s for pi, s in zip(p, step)]
        updates.append(norm)
    return p, updates


def run_rule(grads, rule, threshold):
    parameter = torch.zeros(len(grads[0]), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([parameter], lr=LR, betas=BETAS, eps=EPS)
    reports = []
    for g in grads:
        parameter.grad = torch.tensor(g, dtype=torch.float64)
        reports.append(clipped_step(optimizer, [parameter], rule, threshold))
    return parameter.detach().tolist(), reports


GRADS = [[1.0, -2.0, 3.0, -4.0], [0.5, 0.5, -1.0, 2.0], [-3.0, 1.0, 0.0, 0.25]]


def test_update_rule_is_adam_then_step_clipping():
    expected, norms = adam_by_hand(GRADS, threshold=0.5)
    got, reports = run_rule(GRADS, "update", 0.5)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # The first Adam step is lr * sign(g) per unit: norm 2 for 4 units, so it fires and is cut to 0.5.
    assert norms[0] == pytest.approx(2.0, rel=1e-6)
    assert [r[1] for r in reports] == pytest.approx(norms, rel=1e-9)
    assert [r[2] for r in reports] == [n > 0.5 for n in norms]
    assert reports[0][0] == pytest.approx(math.sqrt(1 + 4 + 9 + 16))  # the gradient norm, never clipped here


def test_update_rule_below_its_threshold_is_plain_adam():
    expected, _ = adam_by_hand(GRADS, threshold=1e9)
    got, reports = run_rule(GRADS, "update", 10.0)
    assert got == pytest.approx(expected, rel=1e-12) and not any(r[2] for r in reports)


def test_grad_rule_clips_the_gradient_not_the_step():
    # Adam is invariant to a gradient's scale at step 1: clipping the gradient leaves the first step whole.
    got, reports = run_rule(GRADS[:1], "grad", 0.5)
    assert got == pytest.approx([-1.0, 1.0, -1.0, 1.0], rel=1e-6)
    grad_norm, update_norm, clipped = reports[0]
    assert clipped and grad_norm == pytest.approx(math.sqrt(30)) and update_norm == pytest.approx(2.0, rel=1e-6)


def test_no_threshold_clips_nothing():
    for rule in ("grad", "update"):
        expected, _ = adam_by_hand(GRADS, threshold=math.inf)
        got, reports = run_rule(GRADS, rule, None)
        assert got == pytest.approx(expected, rel=1e-12) and not any(r[2] for r in reports)
