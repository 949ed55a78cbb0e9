"""clipping_lib.distributed's norms over several groups and meshes, against one process, on gloo."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from clipping_lib.distributed import (
    clip_grad_norm_across_meshes_,
    grouped_total_norm,
    mesh_total_norm,
)
from clipping_lib.lab.workers import WorkerGroup

# The whole gradient, the same on every rank: a "dense" part sharded over all four ranks,
# an "expert" part split over two (the ep group) and copied on the other two, a replicated part.
DENSE = torch.arange(1.0, 17.0) / 7.0
EXPERTS = torch.tensor([[3.0, -1.0, 2.0], [0.5, 4.0, -2.5]])
REPLICATED = torch.tensor([1.5, -0.25])


def _whole(p: float) -> float:
    flat = torch.cat([DENSE, EXPERTS.reshape(-1), REPLICATED])
    return torch.linalg.vector_norm(flat.double(), p).item()


def grouped_norms() -> dict:
    """Run on four ranks: the norms of the layout above, right and with wrong groups."""
    from torch.distributed.device_mesh import init_device_mesh

    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp_mod_ep", "ep"))
    ep = mesh.get_local_rank("ep")
    dense, experts = [DENSE.chunk(4)[rank]], [EXPERTS[ep]]
    right = [(dense, dist.group.WORLD), (experts, mesh["ep"]), ([REPLICATED], "replicated")]
    out = {p: grouped_total_norm(right, p).item() for p in (1.0, 2.0, 3.0, math.inf)}
    out["inf_str"] = grouped_total_norm(right, "inf").item()
    out["twice"] = grouped_total_norm(
        [(dense, dist.group.WORLD), (experts, dist.group.WORLD), ([REPLICATED], "replicated")]
    ).item()
    out["missed"] = grouped_total_norm(
        [(dense, mesh["ep"]), (experts, mesh["ep"]), ([REPLICATED], "replicated")]
    ).item()
    out["bf16"] = grouped_total_norm([([DENSE.chunk(4)[rank].bfloat16()], dist.group.WORLD)])
    out["empty"] = grouped_total_norm([([torch.empty(0)], dist.group.WORLD)]).item()
    return out


def mesh_norms() -> dict:
    """Run on four ranks: DTensors on two meshes plus a plain tensor, and the clip."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    rank = dist.get_rank()
    sparse = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp_mod_ep", "ep"))
    dense_mesh = init_device_mesh("cpu", (4,), mesh_dim_names=("dp",))
    ep = sparse.get_local_rank("ep")
    expert = DTensor.from_local(EXPERTS[ep : ep + 1], sparse, [Replicate(), Shard(0)])
    dense = DTensor.from_local(DENSE.chunk(4)[rank], dense_mesh, [Shard(0)])
    grads = [expert, dense, REPLICATED]
    out = {p: mesh_total_norm(grads, p).item() for p in (2.0, math.inf)}
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    out["returned"] = clip_grad_norm_across_meshes_(params, 1.0).item()
    clipped = [p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad for p in params]
    out["clipped"] = torch.cat([clipped[1], clipped[0].reshape(-1), clipped[2]])
    return out


@pytest.fixture(scope="module")
def results():
    with WorkerGroup(4, timeout=120) as group:
        return group.run(grouped_norms), group.run(mesh_norms)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_grouped_total_norm_is_the_whole_norm_on_every_rank(results, p):
    for rank in results[0]:
        assert rank[p] == pytest.approx(_whole(p), rel=1e-6)
    assert results[0][0]["inf_str"] == results[0][0][math.inf]


def test_wrong_groups_count_twice_or_miss(results):
    rank = results[0][0]
    extra = torch.linalg.vector_norm(EXPERTS).item() ** 2  # experts counted on two replicas
    assert rank["twice"] == pytest.approx(math.sqrt(_whole(2.0) ** 2 + extra), rel=1e-6)
    assert rank["missed"] < _whole(2.0)


def test_grouped_total_norm_keeps_the_dtype_and_sums_in_float32(results):
    rank = results[0][0]
    assert rank["bf16"].dtype == torch.bfloat16
    assert rank["bf16"].item() == pytest.approx(DENSE.norm().item(), rel=2**-7)
    assert rank["empty"] == 0.0


def test_mesh_total_norm_combines_meshes_and_plain_tensors(results):
    for rank in results[1]:
        assert rank[2.0] == pytest.approx(_whole(2.0), rel=1e-6)
        assert rank[math.inf] == pytest.approx(_whole(math.inf), rel=1e-6)
        assert rank["returned"] == pytest.approx(_whole(2.0), rel=1e-6)
        whole = torch.cat([DENSE, EXPERTS.reshape(-1), REPLICATED])
        expected = whole * (1.0 / (_whole(2.0) + 1e-6))
        torch.testing.assert_close(rank["clipped"], expected, rtol=1e-6, atol=1e-7)


def test_one_process_needs_no_group():
    # plain tensors are replicated: no collective, the ordinary norm
    t = [torch.tensor([3.0, 4.0]), torch.tensor([12.0])]
    assert mesh_total_norm(t).item() == pytest.approx(13.0)
    assert grouped_total_norm([(t, "replicated")]).item() == pytest.approx(13.0)
    assert mesh_total_norm([]).item() == 0.0


@pytest.mark.parametrize(
    ("groups", "error", "match"),
    [
        ([([torch.ones(2)], None)], ValueError, "groups\\[0\\]: the group is None"),
        ([([torch.ones(2)], "world")], TypeError, "ProcessGroup"),
        ([(torch.ones(2),)], TypeError, "pair"),
        (torch.ones(2), TypeError, "sequence of"),
        ([([1.0], "replicated")], TypeError, "groups\\[0\\] tensors"),
    ],
)
def test_bad_groups_are_named(groups, error, match):
    with pytest.raises(error, match=match):
        grouped_total_norm(groups)


def test_bad_norm_type_is_named():
    with pytest.raises(ValueError, match="norm_type"):
        mesh_total_norm([torch.ones(2)], norm_type=0)
    with pytest.raises(ValueError, match="norm_type"):
        grouped_total_norm([([torch.ones(2)], "replicated")], norm_type=-1)
