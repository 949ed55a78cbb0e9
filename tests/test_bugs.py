"""clipping_lib.lab.bugs: the reproductions behave as notebook 10 says; the fixes match PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipping_lib.lab.bugs import (
    clip_grad_norm_with_sparse_,
    clip_order_norms,
    dtensor_norm_item,
    pipeline_stage_clip,
    total_norm_with_sparse,
)
from clipping_lib.lab.workers import WorkerGroup


def test_clip_order_divides_the_threshold_by_the_loss_scale():
    norms = np.array([0.0, 1e-6, 0.5, 2.0, 100.0])
    right, wrong = clip_order_norms(norms, 1.0, 2.0**16)
    np.testing.assert_allclose(right, np.minimum(norms, 1.0))
    np.testing.assert_allclose(wrong, np.minimum(norms, 2.0**-16))
    right, wrong = clip_order_norms(norms, 1.0, 1.0)  # no loss scaling: the order is harmless
    np.testing.assert_array_equal(right, wrong)
    with pytest.raises(ValueError, match="loss_scale"):
        clip_order_norms(norms, 1.0, 0.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_order_norms(norms, -1.0, 2.0)
    with pytest.raises(ValueError, match="grad_norms"):
        clip_order_norms(np.array([-1.0]), 1.0, 2.0)


def test_clip_order_matches_a_real_grad_scaler():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale((model(torch.randn(8, 4)) * 10).pow(2).mean()).backward()
    true_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]) / 2.0**10
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=False)  # before unscale_
    scaler.unscale_(optimizer)
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    _, wrong = clip_order_norms(np.array([true_norm.item()]), 1.0, 2.0**10)
    assert after.item() == pytest.approx(wrong[0], rel=1e-5)


def _embedding_and_linear(seed: int = 0):
    torch.manual_seed(seed)
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    linear = torch.nn.Linear(3, 1)
    (linear(embedding(torch.tensor([1, 2, 2, 5]))).sum() * 10).backward()
    return [embedding.weight, linear.weight, linear.bias]


def test_sparse_clip_matches_torch_on_the_dense_copy():
    params = _embedding_and_linear()
    dense = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.to_dense().clone()
        dense.append(q)
    with pytest.raises(NotImplementedError):  # PyTorch itself refuses sparse gradients
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(dense, 1.0)
    total = clip_grad_norm_with_sparse_(params, 1.0)
    torch.testing.assert_close(total, expected)
    assert params[0].grad.is_sparse
    for p, q in zip(params, dense, strict=True):
        torch.testing.assert_close(p.grad.to_dense(), q.grad)
    assert total_norm_with_sparse([p.grad for p in params]).item() <= 1.0 + 1e-5


def test_sparse_norm_counts_duplicate_indices_once_summed():
    grad = torch.sparse_coo_tensor(
        [[0, 0, 1]], torch.tensor([3.0, 1.0, 2.0]), (4,), check_invariants=True
    )
    assert total_norm_with_sparse(grad).item() == pytest.approx(np.hypot(4.0, 2.0))


@pytest.fixture(scope="module")
def group():
    with WorkerGroup(2) as workers:
        yield workers


def test_pipeline_stages_clipped_alone_differ_from_the_whole_model(group):
    stages = group.run(pipeline_stage_clip, max_norm=1.0)
    reference = torch.cat([s["reference"] for s in stages])
    right = torch.cat([s["global_clipped"] for s in stages])
    wrong = torch.cat([s["local_clipped"] for s in stages])
    torch.testing.assert_close(right, reference, rtol=1e-5, atol=1e-7)
    assert torch.linalg.vector_norm(wrong) > 1.2  # each stage alone stays under 1
    for s in stages:
        torch.testing.assert_close(s["global_norm"], s["reference_norm"], rtol=1e-5, atol=0)
        assert s["stage_norm"] < s["reference_norm"]


def test_item_of_a_pending_dtensor_norm_is_the_local_shard(group):
    ranks = group.run(dtensor_norm_item, max_norm=1.0)
    for r in ranks:
        assert "Partial" in r["layer_placements"]
        assert r["layer_full"] == pytest.approx(r["layer_reference"], rel=1e-5)
        assert r["layer_item"] < 0.95 * r["layer_reference"]
        assert r["total_item"] == pytest.approx(r["total_reference"], rel=1e-5)
    local = np.array([r["layer_item"] for r in ranks])
    assert np.sqrt((local**2).sum()) == pytest.approx(ranks[0]["layer_reference"], rel=1e-5)
