"""Notebook 11's experiments (lab.meshes) and its mesh x mistake panel (lab.panels.meshes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipping_lib.lab import meshes
from clipping_lib.lab.panels.meshes import MISTAKES, PANELS, mesh_view, moe_pieces
from clipping_lib.lab.workers import WorkerGroup

TOL = 1e-5


def rel(a, b) -> float:
    return abs(float(a) / float(b) - 1)


@pytest.fixture(scope="module")
def runs():
    with WorkerGroup(4, timeout=120) as group:
        return {
            "tp": group.run(meshes.tp_norms, max_norm=0.5),
            "moe": group.run(meshes.moe_norms, max_norm=1.0),
            "hsdp": group.run(meshes.hsdp_norms),
            "low": group.run(meshes.bf16_partials, scales=[1.0, 100.0, 1000.0]),
        }


def test_tp_norm_under_implicit_replication_is_the_one_process_norm(runs):
    for rank in runs["tp"]:
        assert "mixed torch.Tensor and DTensor" in rank["mixed_error"]
        assert rel(rank["implicit"], rank["reference"]) < TOL
        assert rel(rank["library"], rank["reference"]) < TOL
        assert (rank["implicit_clipped"] - rank["reference_clipped"]).abs().max() < 1e-6
        assert rank["local"] < rank["reference"]
        assert rank["placements"]["ln1.weight"] == "plain"
        assert "Replicate" in rank["placements"]["o.bias"]
    zero = runs["tp"][0]
    counted_four_times = math.sqrt(zero["reference"] ** 2 + 3 * zero["replicated_norm"] ** 2)
    assert rel(zero["summed"], counted_four_times) < TOL


def test_moe_combination_and_the_three_mistakes(runs):
    reference = runs["moe"][0]["reference"]
    for rank in runs["moe"]:
        assert rel(rank["library"], reference) < TOL and rel(rank["grouped"], reference) < TOL
        assert rank["clipped_difference"] < 1e-6
        assert "same mesh" in rank["torch_error"]
        assert rank["own_group"] < reference
        expected_twice = math.sqrt(reference**2 + rank["expert_norm"] ** 2)  # 2 replicas
        assert rel(rank["twice"], expected_twice) < TOL
    own = {rank["ep_rank"]: rank["own_group"].item() for rank in runs["moe"]}
    assert own[0] != pytest.approx(own[1], rel=1e-3)
    zero = runs["moe"][0]
    assert zero["deepspeed_averaged"].item() == pytest.approx((math.sqrt(20) + 10) / 2)
    assert zero["deepspeed_right"].item() == pytest.approx(math.sqrt(120))


def test_hsdp_factors(runs):
    z = runs["hsdp"][0]
    for key in ("ddp", "fsdp", "hsdp", "fsdp_sum", "hsdp_sum", "summed_over_shard"):
        assert rel(z[key], z["reference"]) < TOL, key
    assert rel(z["hsdp_replicate_avg"] * z["replicate"], z["reference"]) < TOL
    assert rel(z["ddp_global"] * 4, z["reference"]) < TOL
    assert rel(z["summed_over_world"], math.sqrt(z["replicate"]) * z["reference"]) < TOL


def test_low_precision_partials(runs):
    low = runs["low"][0]
    assert (low["bf16"] / low["fp32"] - 1).abs().max() < 4 * 2.0**-8
    assert torch.isfinite(low["fp16"][:2]).all() and torch.isinf(low["fp16"][2])


def test_optimizer_in_backward():
    result = meshes.optimizer_in_backward(max_norm=0.2)
    assert result["late_norm"] == 0 and result["global_norm"] > 0.2
    assert result["per_parameter_cosine"] < 0.95
    assert len(result["order"]) == 4
    above = meshes.optimizer_in_backward(max_norm=100.0)  # no clipping anywhere: same update
    torch.testing.assert_close(above["per_parameter"], above["global"])


@pytest.fixture(scope="module")
def pieces():
    return moe_pieces()


def test_mesh_view_matches_its_formulas(pieces):
    dense, experts = pieces.dense_squares.sum(), pieces.expert_squares.sum()
    view = mesh_view(pieces, 2, 4, 2, "shards_twice")
    assert view.world == 8 and len(view.reported) == 8
    assert view.true_norm == pytest.approx(pieces.true_norm)
    np.testing.assert_allclose(view.reported, np.sqrt(2 * dense + experts))
    twice = mesh_view(pieces, 2, 4, 2, "experts_twice").reported
    np.testing.assert_allclose(twice, np.sqrt(dense + 4 * experts))
    local = mesh_view(pieces, 1, 4, 4, "local").reported
    assert np.sum(local**2) == pytest.approx(dense + experts)  # no replicas: the parts add up
    assert mesh_view(pieces, 1, 1, 4, "local").ep == 1  # ep clamped to the world size
    for key in MISTAKES.values():
        assert mesh_view(pieces, 1, 1, 1, key).errors[key] < 1e-12  # one rank: nothing to miss


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"replicate": 3}, ValueError, "replicate must be a power of two"),
        ({"shard": 16}, ValueError, "shard must be"),
        ({"ep": 1.0}, TypeError, "ep must be an int"),
        ({"mistake": "nope"}, ValueError, "mistake must be one of"),
    ],
)
def test_mesh_view_rejects_bad_input(pieces, kwargs, error, match):
    args = {"replicate": 2, "shard": 2, "ep": 2, "mistake": "local"} | kwargs
    with pytest.raises(error, match=match):
        mesh_view(pieces, **args)


def test_panel_moves_with_the_controls():
    panel = PANELS["meshes"]()
    before = panel.image.value
    panel.controls["shard"].value = 8
    panel.controls["replicate"].value = 4
    panel.controls["mistake"].value = "shards_twice"
    assert panel.image.value != before
    assert "W = 32 ranks" in panel.readout.value
    panel.controls["replicate"].value = 1
    assert "largest error 0.0%" in panel.readout.value
