"""clipping_lib.clip against torch.nn.utils: same inputs, same results, clear errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import clone_params, grads_of, make_params

import clipping_lib as cl
from clipping_lib.lab.syncs import CountHostSyncs

SHAPES = [(4, 5), (7,), (3, 2, 2), (1,)]
NORM_TYPES = [0.5, 1, 1.5, 2, 3.5, 4, math.inf, "inf"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def assert_same_grads(ours, reference, exact=True):
    for p, q in zip(ours, reference, strict=True):
        if p.grad is None:
            assert q.grad is None
            continue
        if exact:
            assert torch.equal(p.grad, q.grad), (p.grad, q.grad)
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def assert_unchanged(before, params):
    for grad, p in zip(before, params, strict=True):
        assert torch.equal(grad, p.grad)


# --- parity with torch.nn.utils -------------------------------------------------


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("foreach", [None, True, False])
def test_clip_grad_norm_matches_torch_bit_for_bit(twin_params, norm_type, dtype, foreach):
    ours, ref = twin_params(SHAPES, dtype=dtype, scale=3.0)
    norm = cl.clip_grad_norm_(ours, 1.0, norm_type, foreach=foreach)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 1.0, norm_type, foreach=foreach)
    assert norm.dtype == ref_norm.dtype
    assert torch.equal(norm, ref_norm)
    assert_same_grads(ours, ref)


@pytest.mark.parametrize("max_norm", [0.0, 1e-3, 1.0, 5.0, 1e6])
def test_clip_grad_norm_thresholds_match_torch(twin_params, max_norm):
    ours, ref = twin_params(SHAPES, scale=2.0)
    assert torch.equal(
        cl.clip_grad_norm_(ours, max_norm), torch.nn.utils.clip_grad_norm_(ref, max_norm)
    )
    assert_same_grads(ours, ref)


@pytest.mark.parametrize("clip_value", [0.0, 0.1, 0.5, 2.5, 100.0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("foreach", [None, True, False])
def test_clip_grad_value_matches_torch(twin_params, clip_value, dtype, foreach):
    ours, ref = twin_params(SHAPES, dtype=dtype, scale=2.0)
    assert cl.clip_grad_value_(ours, clip_value, foreach=foreach) is None
    torch.nn.utils.clip_grad_value_(ref, clip_value, foreach=foreach)
    assert_same_grads(ours, ref)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_get_total_norm_matches_torch(norm_type):
    tensors = [g for g in grads_of(make_params(SHAPES, scale=5.0)) if g is not None]
    assert torch.equal(
        cl.get_total_norm(tensors, norm_type),
        torch.nn.utils.get_total_norm(tensors, norm_type),
    )


def test_split_api_matches_torch(twin_params):
    ours, ref = twin_params(SHAPES, scale=4.0)
    norm = cl.get_total_norm([p.grad for p in ours])
    cl.clip_grads_with_norm_(ours, 1.5, norm)
    ref_norm = torch.nn.utils.get_total_norm([p.grad for p in ref])
    torch.nn.utils.clip_grads_with_norm_(ref, 1.5, ref_norm)
    assert torch.equal(norm, ref_norm)
    assert_same_grads(ours, ref)


def test_mixed_dtypes_are_grouped_like_torch():
    ours = make_params([(3, 3), (5,)], dtype=torch.float32, scale=3.0) + make_params(
        [(4,), (2, 2)], dtype=torch.float64, scale=3.0, seed=1
    )
    ref = clone_params(ours)
    norm = cl.clip_grad_norm_(ours, 1.0)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    torch.testing.assert_close(norm, ref_norm, rtol=1e-6, atol=0)
    assert_same_grads(ours, ref, exact=False)


def test_none_grads_are_skipped(twin_params):
    ours, ref = twin_params(SHAPES, scale=3.0, grad_none=(1, 3))
    assert torch.equal(cl.clip_grad_norm_(ours, 1.0), torch.nn.utils.clip_grad_norm_(ref, 1.0))
    assert ours[1].grad is None and ours[3].grad is None
    assert_same_grads(ours, ref)


def test_single_tensor_is_accepted(twin_params):
    (ours,), (ref,) = twin_params([(10,)], scale=3.0)
    assert torch.equal(cl.clip_grad_norm_(ours, 1.0), torch.nn.utils.clip_grad_norm_(ref, 1.0))
    assert torch.equal(ours.grad, ref.grad)
    cl.clip_grad_value_(ours, 0.1)
    torch.nn.utils.clip_grad_value_(ref, 0.1)
    assert torch.equal(ours.grad, ref.grad)


def test_generator_is_consumed_once_and_still_clips(twin_params):
    ours, ref = twin_params(SHAPES, scale=3.0)
    norm = cl.clip_grad_norm_((p for p in ours), 1.0)
    assert torch.equal(norm, torch.nn.utils.clip_grad_norm_((p for p in ref), 1.0))
    assert_same_grads(ours, ref)


def test_empty_generator_warns_like_torch():
    with pytest.warns(UserWarning, match="empty generator"):
        norm = cl.clip_grad_norm_((p for p in []), 1.0)
    assert torch.equal(norm, torch.tensor(0.0))


def test_empty_list_gives_zero_norm_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(cl.clip_grad_norm_([], 1.0), torch.tensor(0.0))
        assert torch.equal(cl.get_total_norm([]), torch.nn.utils.get_total_norm([]))
        cl.clip_grad_value_([], 1.0)


def test_all_grads_none_gives_zero_norm(twin_params):
    ours, _ = twin_params(SHAPES, grad_none=(0, 1, 2, 3))
    assert torch.equal(cl.clip_grad_norm_(ours, 1.0), torch.tensor(0.0))


# --- PyTorch's own test cases, ported -------------------------------------------


def _linear_with_arange_grads() -> torch.nn.Linear:
    layer = torch.nn.Linear(10, 10)
    layer.weight.grad = torch.arange(1.0, 101).view(10, 10)
    layer.bias.grad = torch.ones(10).div(1000)
    return layer


@pytest.mark.parametrize("norm_type", [0.5, 1.5, 2, 4, "inf"])
def test_ported_arange_case(norm_type):
    """torch's test_clip_grad_norm: arange grads, max_norm 2, several norm types."""
    ours, ref = _linear_with_arange_grads(), _linear_with_arange_grads()
    before = [p.grad.clone() for p in ours.parameters()]
    norm = cl.clip_grad_norm_(ours.parameters(), 2.0, norm_type)
    assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(ref.parameters(), 2.0, norm_type))
    p = math.inf if norm_type == "inf" else float(norm_type)
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in before]), p)
    torch.testing.assert_close(norm, expected)
    after = grads_of(list(ours.parameters()))
    ratios = torch.cat([(a / b).flatten() for a, b in zip(after, before, strict=True)])
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()))
    torch.testing.assert_close(
        cl.get_total_norm([q.grad for q in ours.parameters()], p),
        torch.tensor(2.0),
        rtol=1e-5,
        atol=0,
    )


def test_ported_value_case():
    """torch's test_clip_grad_value: grads in [-10, 10] and 2, clipped at 2.5."""
    layer = torch.nn.Linear(10, 10)
    layer.weight.grad = torch.arange(-50.0, 50).view(10, 10).div(5)
    layer.bias.grad = torch.ones(10).mul(2)
    cl.clip_grad_value_(layer.parameters(), 2.5)
    assert layer.weight.grad.min() == -2.5 and layer.weight.grad.max() == 2.5
    assert torch.equal(layer.bias.grad, torch.full((10,), 2.0))


NONFINITE_SCALARS = [1.0, math.inf, math.nan, 2e22, 2e200]


@pytest.mark.parametrize("scalar", NONFINITE_SCALARS)
@pytest.mark.parametrize("norm_type", [0.5, 1, 2, 3.5, math.inf])
@pytest.mark.parametrize("foreach", [True, False])
def test_ported_nonfinite_table(scalar, norm_type, foreach):
    """torch's error_if_nonfinite table: raise exactly when torch raises, before touching grads."""

    def build():
        p = torch.nn.Parameter(torch.zeros(4))
        p.grad = torch.tensor([scalar, 1.0, -2.0, 0.5])
        return [p]

    ours, ref = build(), build()
    try:
        ref_norm = torch.nn.utils.clip_grad_norm_(ref, 1.0, norm_type, True, foreach)
        torch_raised = False
    except RuntimeError:
        torch_raised = True
    if torch_raised:
        with pytest.raises(RuntimeError, match="non-finite"):
            cl.clip_grad_norm_(ours, 1.0, norm_type, True, foreach)
        torch.testing.assert_close(ours[0].grad, build()[0].grad, equal_nan=True, rtol=0, atol=0)
    else:
        norm = cl.clip_grad_norm_(ours, 1.0, norm_type, True, foreach)
        assert torch.equal(norm, ref_norm)
        assert torch.equal(ours[0].grad, ref[0].grad)
    # Without the check both propagate the same (possibly non-finite) values.
    ours, ref = build(), build()
    torch.testing.assert_close(
        cl.clip_grad_norm_(ours, 1.0, norm_type, False, foreach),
        torch.nn.utils.clip_grad_norm_(ref, 1.0, norm_type, False, foreach),
        equal_nan=True,
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(ours[0].grad, ref[0].grad, equal_nan=True, rtol=0, atol=0)


# --- eps and exact clipping -----------------------------------------------------


def test_default_eps_lands_just_below_max_norm():
    """In float64 the shortfall is visible: the norm becomes c * n / (n + 1e-6) < c."""
    (p,) = make_params([(100,)], dtype=torch.float64, scale=0.2)
    before = torch.linalg.vector_norm(p.grad)
    cl.clip_grad_norm_([p], 1.0)
    after = torch.linalg.vector_norm(p.grad)
    assert after < 1.0
    torch.testing.assert_close(after, before / (before + 1e-6), rtol=1e-12, atol=0)


def test_eps_zero_clips_exactly():
    (p,) = make_params([(100,)], dtype=torch.float64, scale=10.0)
    before = torch.linalg.vector_norm(p.grad)
    cl.clip_grad_norm_([p], 1.0, eps=0.0)
    torch.testing.assert_close(
        torch.linalg.vector_norm(p.grad), torch.tensor(1.0, dtype=torch.float64), rtol=1e-15, atol=0
    )
    assert before > 1.0


def test_eps_zero_is_a_no_op_below_the_threshold():
    (p,) = make_params([(10,)], scale=0.01)
    before = p.grad.clone()
    cl.clip_grad_norm_([p], 1.0, eps=0.0)
    assert torch.equal(p.grad, before)


def test_eps_zero_with_zero_grads_keeps_zeros():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.zeros(3)
    cl.clip_grad_norm_([p], 1.0, eps=0.0)
    assert torch.equal(p.grad, torch.zeros(3))


# --- pure one-tensor forms -----------------------------------------------------


def test_clip_by_value_and_by_norm_are_pure():
    g = torch.tensor([3.0, -4.0])
    assert torch.equal(cl.clip_by_value(g, 1.0), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(cl.clip_by_norm(g, 1.0), torch.tensor([0.6, -0.8]))
    torch.testing.assert_close(cl.clip_by_norm(g, 10.0), g)
    assert torch.equal(g, torch.tensor([3.0, -4.0]))


def test_clip_by_norm_with_inf_norm():
    g = torch.tensor([3.0, -4.0])
    torch.testing.assert_close(cl.clip_by_norm(g, 2.0, "inf"), torch.tensor([1.5, -2.0]))


# --- bad input --------------------------------------------------------------------

BAD_THRESHOLDS = [
    (-1.0, ValueError, ">= 0"),
    (math.nan, ValueError, "NaN"),
    ("1.0", TypeError, "real number"),
    (None, TypeError, "real number"),
    (True, TypeError, "real number"),
]


@pytest.mark.parametrize(("value", "error", "message"), BAD_THRESHOLDS)
def test_bad_max_norm_is_named_and_nothing_changes(value, error, message):
    params = make_params(SHAPES, scale=3.0)
    before = grads_of(params)
    with pytest.raises(error, match=f"max_norm.*{message}"):
        cl.clip_grad_norm_(params, value)
    with pytest.raises(error, match=f"max_norm.*{message}"):
        cl.clip_grads_with_norm_(params, value, torch.tensor(1.0))
    assert_unchanged(before, params)


@pytest.mark.parametrize(("value", "error", "message"), BAD_THRESHOLDS)
def test_bad_clip_value_is_named_and_nothing_changes(value, error, message):
    params = make_params(SHAPES, scale=3.0)
    before = grads_of(params)
    with pytest.raises(error, match=f"clip_value.*{message}"):
        cl.clip_grad_value_(params, value)
    with pytest.raises(error, match=f"clip_value.*{message}"):
        cl.clip_by_value(torch.ones(2), value)
    assert_unchanged(before, params)


@pytest.mark.parametrize(
    ("norm_type", "error"),
    [
        (0, ValueError),
        (-2.0, ValueError),
        (math.nan, ValueError),
        ("-inf", ValueError),
        ("two", ValueError),
        (None, TypeError),
        ([2], TypeError),
    ],
)
def test_bad_norm_type_is_named(norm_type, error):
    params = make_params(SHAPES, scale=3.0)
    before = grads_of(params)
    with pytest.raises(error, match="norm_type"):
        cl.clip_grad_norm_(params, 1.0, norm_type)
    with pytest.raises(error, match="norm_type"):
        cl.get_total_norm([p.grad for p in params], norm_type)
    assert_unchanged(before, params)


def test_non_tensor_in_parameters_is_named_with_its_position():
    params = make_params(SHAPES, scale=3.0)
    before = grads_of(params)
    with pytest.raises(
        TypeError, match=r"parameters must contain only Tensors, got int at position 2"
    ):
        cl.clip_grad_norm_([params[0], params[1], 3], 1.0)
    with pytest.raises(TypeError, match="parameters"):
        cl.clip_grad_value_(42, 1.0)
    with pytest.raises(TypeError, match="tensors"):
        cl.get_total_norm(["x"])
    assert_unchanged(before, params)


@pytest.mark.parametrize(
    ("total_norm", "error", "message"),
    [
        (torch.ones(2), ValueError, "0-d"),
        (torch.ones(1, 1), ValueError, "0-d"),
        (1.0, TypeError, "Tensor"),
        (torch.tensor(1), TypeError, "floating"),
    ],
)
def test_bad_total_norm_is_named(total_norm, error, message):
    params = make_params(SHAPES, scale=3.0)
    before = grads_of(params)
    with pytest.raises(error, match=f"total_norm.*{message}"):
        cl.clip_grads_with_norm_(params, 1.0, total_norm)
    assert_unchanged(before, params)


@pytest.mark.parametrize("eps", [-1e-6, math.nan, "small"])
def test_bad_eps_is_named(eps):
    with pytest.raises((ValueError, TypeError), match="eps"):
        cl.clip_grad_norm_(make_params(SHAPES), 1.0, eps=eps)


def test_exact_clipping_to_zero_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"max_norm must be > 0 when eps=0\.0.*0/0"):
        cl.clip_grad_norm_(make_params(SHAPES), 0.0, eps=0.0)


def test_bad_foreach_is_named():
    with pytest.raises(TypeError, match="foreach"):
        cl.clip_grad_norm_(make_params(SHAPES), 1.0, foreach="yes")


def test_foreach_true_on_an_unsupported_device_raises_like_torch():
    p = torch.nn.Parameter(torch.ones(3, device="meta"))
    p.grad = torch.ones(3, device="meta")
    with pytest.raises(RuntimeError, match="foreach=True"):
        cl.clip_grad_value_([p], 1.0, foreach=True)


# --- no host sync in the hot path ---------------------------------------------------


def test_norm_clipping_makes_no_host_sync():
    params = make_params(SHAPES, scale=3.0)
    with CountHostSyncs() as counter:
        cl.clip_grad_norm_(params, 1.0)
        cl.clip_grads_with_norm_(params, 1.0, cl.get_total_norm([p.grad for p in params]))
        cl.clip_grad_value_(params, 0.1)
    assert counter.count == 0


def test_error_if_nonfinite_costs_exactly_one_host_sync():
    with CountHostSyncs() as counter:
        cl.clip_grad_norm_(make_params(SHAPES, scale=3.0), 1.0, error_if_nonfinite=True)
    assert counter.count == 1


def test_the_sync_counter_sees_item_and_bool():
    t = torch.tensor(1.0)
    with CountHostSyncs() as counter:
        t.item()
        bool(t > 0)
        (t * 2).tolist()
    assert counter.count == 3


def test_infinite_threshold_measures_and_changes_nothing_as_in_pytorch():
    ours = make_params(SHAPES, scale=3.0)
    theirs = clone_params(ours)
    before = grads_of(ours)
    norm = cl.clip_grad_norm_(ours, math.inf)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(theirs, math.inf))
    assert_unchanged(before, ours)
    cl.clip_grads_with_norm_(ours, math.inf, norm)
    cl.clip_grad_value_(ours, math.inf)
    assert_unchanged(before, ours)
    g = torch.randn(5) * 1e15
    assert torch.equal(cl.clip_by_norm(g, math.inf), g)
    assert torch.equal(cl.clip_by_value(g, math.inf), g)


@pytest.mark.parametrize(
    ("second", "clip_value", "error"),
    [
        (torch.float16, 1e5, RuntimeError),  # 1e5 overflows float16
        (torch.bfloat16, 3.4e38, RuntimeError),
        (torch.complex64, 1.0, NotImplementedError),  # clamp has no complex kernel
    ],
)
def test_clip_grad_value_checks_everything_before_touching_a_gradient(second, clip_value, error):
    first = torch.nn.Parameter(torch.zeros(3))
    first.grad = torch.tensor([1e6, -1e6, 1.0])
    other = torch.nn.Parameter(torch.zeros(2, dtype=second))
    other.grad = torch.ones(2, dtype=second)
    reference = clone_params([first, other])
    with pytest.raises(error):
        torch.nn.utils.clip_grad_value_(reference, clip_value)  # PyTorch raises too
    with pytest.raises(error, match=r"clip_value|complex"):
        cl.clip_grad_value_([first, other], clip_value)
    assert torch.equal(first.grad, torch.tensor([1e6, -1e6, 1.0]))
    assert torch.equal(other.grad, torch.ones(2, dtype=second))


def test_largest_finite_clip_value_of_a_dtype_is_accepted():
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))
    p.grad = torch.tensor([1.0, -70000.0]).to(torch.float16)  # -inf in float16
    cl.clip_grad_value_([p], 65504.0)
    assert p.grad.tolist() == [1.0, -65504.0]


# --- issue 20, item 9: the gradient of clip_by_norm at zero; bad flags and tensors ---


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
def test_the_gradient_of_clip_by_norm_at_zero_is_that_of_the_identity(norm_type):
    g = torch.zeros(4, requires_grad=True)
    cl.clip_by_norm(g, 1.0, norm_type).sum().backward()  # eps=0.0: 0/0 in the old coefficient
    assert torch.equal(g.grad, torch.ones(4))
    g = torch.zeros(4, requires_grad=True)
    cl.clip_by_norm(g, 0.0, norm_type, eps=1e-6).sum().backward()  # c = 0: the map is g -> 0
    assert torch.equal(g.grad, torch.zeros(4))


def test_clip_by_norm_still_clips_and_propagates_nan():
    clipped = cl.clip_by_norm(torch.tensor([3.0, 4.0]), 1.0)
    torch.testing.assert_close(clipped, torch.tensor([0.6, 0.8]))
    assert torch.isnan(cl.clip_by_norm(torch.tensor([math.nan, 1.0]), 1.0)).all()
    g = torch.tensor([3.0, 4.0], requires_grad=True)
    cl.clip_by_norm(g, 1.0).sum().backward()
    assert torch.isfinite(g.grad).all()


@pytest.mark.parametrize("bad", ["no", 1, None, torch.tensor(True)])
def test_error_if_nonfinite_must_be_a_bool(bad):
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    with pytest.raises(TypeError, match="error_if_nonfinite must be True or False"):
        cl.clip_grad_norm_([p], 1.0, error_if_nonfinite=bad)
    with pytest.raises(TypeError, match="error_if_nonfinite"):
        cl.get_total_norm([p.grad], error_if_nonfinite=bad)
    assert torch.equal(p.grad, torch.ones(2))  # refused before anything was touched


@pytest.mark.parametrize("g", [torch.tensor([True, False]), torch.tensor([1, 5])])
def test_clip_by_value_and_clip_by_norm_refuse_bool_and_integer_tensors(g):
    with pytest.raises(TypeError, match="g must be a floating-point"):
        cl.clip_by_value(g, 1.0)
    with pytest.raises(TypeError, match="g must be a floating-point"):
        cl.clip_by_norm(g, 1.0)
    with pytest.raises(TypeError, match="clip_value must be a real number, got bool"):
        cl.clip_by_value(torch.ones(2), True)
