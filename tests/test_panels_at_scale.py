"""The per-sample clipping panel of notebook 08: pure view and slider behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from clipping_lib.lab.panels.at_scale import (
    OUTLIERS,
    PANELS,
    example_gradients,
    per_sample_view,
)


@pytest.fixture(scope="module")
def grads():
    return example_gradients()


def test_view_clips_each_example_exactly(grads):
    clean = np.delete(grads, np.arange(32)[OUTLIERS], axis=0).mean(axis=0)
    view = per_sample_view(grads, 3.0, clean)
    np.testing.assert_allclose(view.clipped_norms, np.minimum(view.norms, 3.0))
    np.testing.assert_allclose(
        view.update, (grads * (view.clipped_norms / view.norms)[:, None]).mean(0)
    )
    assert view.cosine_to_clean > 0.9 > 0.3 > view.batch_cosine_to_clean
    huge = per_sample_view(grads, 100.0, clean)  # above every norm: no clipping at all
    np.testing.assert_allclose(huge.update, grads.mean(axis=0))
    with pytest.raises(ValueError, match="max_norm"):
        per_sample_view(grads, 0.0, clean)


def test_panel_moves_with_the_slider():
    panel = PANELS["per_sample"]()
    before = panel.image.value
    slider = panel.controls["max_norm"]
    for value in (10**slider.min, 10**slider.max, 1.0):
        slider.value = value
    assert panel.image.value != before
    assert "C = 1.00" in panel.readout.value and "of 32 examples clipped" in panel.readout.value


def test_dtensor_norm_of_one_gradient_is_partial_until_full_tensor():
    # Notebook 08's claim: .item() of one DTensor gradient's norm is this rank's part;
    # .full_tensor() is the true norm; the total over a list is already reduced.
    from clipping_lib.lab.panels.at_scale_workers import dtensor_norm_logging
    from clipping_lib.lab.workers import WorkerGroup

    with WorkerGroup(2, timeout=60) as group:
        ranks = group.run(dtensor_norm_logging)
    reference = ranks[0]["layer_reference"]
    for rank in ranks:
        assert "NormPartial" in rank["layer_placements"]
        assert rank["layer_item"] < 0.95 * reference
        assert rank["layer_full"] == pytest.approx(reference, rel=1e-5)
        assert "Replicate" in rank["total_placements"]
        assert rank["total_item"] == pytest.approx(ranks[0]["total_item"], rel=1e-6)
    parts = sum(rank["layer_item"] ** 2 for rank in ranks) ** 0.5
    assert parts == pytest.approx(reference, rel=1e-5)  # the partial norms add in squares
