"""clipping_lib.lab.tools_check: the helpers notebook 10 compares tools with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from clipping_lib import clip_by_norm, clip_grad_norm_
from clipping_lib.lab.tools_check import (
    applied_gradient,
    clipnorm_view,
    flat,
    ppo_surrogate,
    relative_difference,
)


def test_applied_gradient_recovers_what_sgd_used():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    before = flat(model.parameters())
    model(torch.randn(5, 3)).pow(2).sum().backward()
    clip_grad_norm_(model.parameters(), 0.5)
    expected = flat([p.grad for p in model.parameters()])
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    got = applied_gradient(before, flat(model.parameters()), 0.1)
    assert relative_difference(got, expected) < 1e-6
    with pytest.raises(ValueError, match="lr"):
        applied_gradient(before, before, 0.0)
    with pytest.raises(ValueError, match="shape"):
        applied_gradient(before, before[:-1], 1.0)


def test_relative_difference():
    a = torch.tensor([3.0, 4.0])
    assert relative_difference(a, a) == 0.0
    assert relative_difference(a * 1.1, a) == pytest.approx(0.1)
    assert relative_difference(torch.zeros(2), torch.zeros(2)) == 0.0
    assert relative_difference(a, torch.zeros(2)) == float("inf")
    assert flat([]).numel() == 0


@given(
    st.lists(st.floats(0.0, 1e3), min_size=1, max_size=6),
    st.floats(1e-3, 1e3),
)
def test_clipnorm_view_matches_clipping_each_variable(norms, c):
    tensors = [torch.tensor([n, 0.0], dtype=torch.float64) for n in norms]
    each = [clip_by_norm(t, c) for t in tensors]
    view = clipnorm_view(norms, [c])
    assert view.per_variable_norm[0] == pytest.approx(flat(each).norm().item(), rel=1e-9, abs=1e-12)
    assert view.global_norm[0] == pytest.approx(min(flat(tensors).norm().item(), c), rel=1e-9)
    assert view.per_variable_norm[0] <= np.sqrt(len(norms)) * c * (1 + 1e-12)
    assert view.per_variable_norm[0] >= view.global_norm[0] * (1 - 1e-12)
    assert view.per_variable_cosine[0] <= 1 + 1e-12


def test_clipnorm_view_bends_the_direction_and_checks_input():
    view = clipnorm_view([10.0, 0.1], [0.1, 1.0, 100.0])
    assert view.per_variable_cosine[0] < 0.8 and view.per_variable_cosine[2] == pytest.approx(1)
    assert list(view.variables_clipped) == [1, 1, 0]
    with pytest.raises(ValueError, match="variable_norms"):
        clipnorm_view([-1.0], [1.0])
    with pytest.raises(ValueError, match="thresholds"):
        clipnorm_view([1.0], [0.0])


def test_ppo_surrogate_clips_the_ratio_not_the_gradient():
    ratio = torch.tensor([0.5, 1.0, 1.5, 0.5, 1.5], requires_grad=True)
    advantage = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    objective = ppo_surrogate(ratio, advantage, 0.2)
    torch.testing.assert_close(objective.detach(), torch.tensor([0.5, 1.0, 1.2, -0.8, -1.5]))
    objective.sum().backward()
    # ratio 1.5 with A > 0 and 0.5 with A < 0 sit on the flat clipped branch: no gradient
    torch.testing.assert_close(ratio.grad, torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0]))
    with pytest.raises(TypeError):
        ppo_surrogate([1.0], advantage)
