"""Transfer functions: potentials, divergences, Hessians, inverses, errors."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bregman.transfers import (
    TRANSFERS,
    NonMonotoneTransferError,
    Transfer,
    UnknownTransferError,
    get_transfer,
)

NAMES = sorted(TRANSFERS)
CONFIGS = [("identity", {}), ("leaky_relu", {"negative_slope": 0.1}), ("relu", {}), ("sigmoid", {}),
           ("tanh", {}), ("softmax", {})]

finite = st.floats(min_value=-8, max_value=8, allow_nan=False, allow_infinity=False)


def rows(width: int = 5):
    return st.lists(st.lists(finite, min_size=width, max_size=width), min_size=1, max_size=4)


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("name,params", CONFIGS)
@settings(max_examples=40, deadline=None)
@given(a=rows(), a_hat=rows())
def test_divergence_nonnegative_and_zero_on_diagonal(name, params, a, a_hat):
    t = get_transfer(name, **params)
    n = min(len(a), len(a_hat))
    a, a_hat = _t(a[:n]), _t(a_hat[:n])
    d = t.divergence(a_hat, a)
    assert d.shape == (n,)
    assert bool((d >= 0).all())
    assert torch.equal(t.divergence(a, a), torch.zeros(n, dtype=torch.float64))


@pytest.mark.parametrize("name,params", CONFIGS)
@settings(max_examples=30, deadline=None)
@given(a=rows(), a_hat=rows())
def test_divergence_matches_definition_and_its_gradient_is_the_output_error(name, params, a, a_hat):
    """D = F(â) − F(a) − f(a)·(â − a), and ∇_â D = f(â) − f(a) (autograd)."""
    t = get_transfer(name, **params)
    n = min(len(a), len(a_hat))
    a, a_hat = _t(a[:n]), _t(a_hat[:n]).requires_grad_(True)
    definition = t.F(a_hat) - t.F(a) - (t.f(a) * (a_hat - a)).sum(-1)
    d = t.divergence(a_hat, a)
    torch.testing.assert_close(d, definition.clamp_min(0), atol=1e-9, rtol=1e-9)
    (grad,) = torch.autograd.grad(d.sum(), a_hat)
    expected = t.f(a_hat) - t.f(a)
    # ReLU-type kinks: the subgradient may differ only where â is exactly 0.
    torch.testing.assert_close(grad, expected.detach(), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name,params", CONFIGS)
@settings(max_examples=30, deadline=None)
@given(a=rows())
def test_f_is_the_gradient_of_F_and_hessian_matches_autograd(name, params, a):
    t = get_transfer(name, **params)
    x = _t(a).requires_grad_(True)
    (grad,) = torch.autograd.grad(t.F(x).sum(), x)
    torch.testing.assert_close(grad, t.f(x).detach(), atol=1e-10, rtol=1e-10)
    v = torch.linspace(-1, 1, x.shape[-1], dtype=torch.float64).expand_as(x)
    jac_v = torch.autograd.functional.jvp(t.f, x.detach(), v)[1]  # ∇f(x) v = ∇²F(x) v
    hv = t.hvp(x.detach(), v)
    if name == "relu":  # floored where a <= 0
        floor = t.hessian_floor
        jac_v = jac_v + floor * v * (x.detach() <= 0)
    if name in ("relu", "leaky_relu"):  # at the kink a = 0 any one-sided slope is a valid convention
        keep = x.detach() != 0
        hv, jac_v = hv[keep], jac_v[keep]
    if t.elementwise:
        torch.testing.assert_close(t.hessian_diag(x.detach()) * v, t.hvp(x.detach(), v))
    torch.testing.assert_close(hv, jac_v, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name,params", [c for c in CONFIGS if c[0] != "relu"])
@settings(max_examples=30, deadline=None)
@given(a=rows())
def test_f_inv_inverts_f(name, params, a):
    t = get_transfer(name, **params)
    x = _t(a).clamp(-5, 5)
    y = t.f(x)
    back = t.f_inv(y)
    torch.testing.assert_close(t.f(back), y, atol=1e-9, rtol=1e-7)
    if name != "softmax":
        torch.testing.assert_close(back, x, atol=1e-6, rtol=1e-6)


def test_relu_has_no_inverse_and_a_recorded_floor():
    t = get_transfer("relu", hessian_floor=1e-5)
    assert t.params == {"hessian_floor": 1e-5}
    assert t.hessian_diag(torch.tensor([-1.0, 2.0])).tolist() == pytest.approx([1e-5, 1.0])
    with pytest.raises(NotImplementedError, match="not invertible"):
        t.f_inv(torch.zeros(2))


@settings(max_examples=40, deadline=None)
@given(a=rows(6), a_hat=rows(6), shift=finite, shift_hat=finite)
def test_softmax_divergence_ignores_row_shifts_and_is_kl(a, a_hat, shift, shift_hat):
    t = get_transfer("softmax")
    n = min(len(a), len(a_hat))
    a, a_hat = _t(a[:n]), _t(a_hat[:n])
    d = t.divergence(a_hat, a)
    torch.testing.assert_close(t.divergence(a_hat + shift_hat, a + shift), d, atol=1e-10, rtol=1e-8)
    p, q = torch.softmax(a, -1), torch.softmax(a_hat, -1)
    torch.testing.assert_close(d, (p * (p.log() - q.log())).sum(-1), atol=1e-9, rtol=1e-7)
    assert torch.allclose(t.remove_gauge(a).sum(-1), torch.zeros(n, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softmax", "leaky_relu", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_divergence_is_finite_for_saturated_inputs(name, dtype):
    t = get_transfer(name)
    a = torch.tensor([[80.0, -90.0, 0.5, 300.0], [-300.0, 200.0, -1.0, 0.0]], dtype=dtype)
    a_hat = torch.tensor([[79.0, -95.0, 0.4, -300.0], [-299.0, -200.0, 1.0, 50.0]], dtype=dtype)
    d = t.divergence(a_hat, a)
    assert torch.isfinite(d).all() and (d >= 0).all()
    assert torch.isfinite(t.F(a)).all() and torch.isfinite(t.f(a)).all()


def test_sigmoid_divergence_is_accurate_when_saturated():
    """A saturated unit's KL is tiny but must not be swamped by round-off of the softplus terms."""
    t = get_transfer("sigmoid")
    a, a_hat = torch.tensor([[40.0]], dtype=torch.float64), torch.tensor([[41.0]], dtype=torch.float64)
    # KL(σ(40) ‖ σ(41)) ≈ e^{-40} − e^{-41} − e^{-40}·1 ... to first order: e^{-40}(e^{-1} + 1 − 1) = e^{-41}
    exact = math.exp(-41) - math.exp(-40) + math.exp(-40) * 1.0
    assert float(t.divergence(a_hat, a)[0]) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("name", ["gelu", "GELU", "silu", "swish", "mish", "hardswish"])
def test_non_monotone_transfers_are_refused_with_advice(name):
    with pytest.raises(NonMonotoneTransferError, match="not monotone.*neighbouring layer"):
        get_transfer(name)
    assert issubclass(NonMonotoneTransferError, ValueError)


def test_non_monotone_modules_are_refused():
    with pytest.raises(NonMonotoneTransferError):
        get_transfer(torch.nn.GELU())
    with pytest.raises(NonMonotoneTransferError):
        get_transfer(torch.nn.SiLU())


def test_modules_map_to_transfers():
    assert get_transfer(torch.nn.LeakyReLU(0.2)) == get_transfer("leaky_relu", negative_slope=0.2)
    assert get_transfer(torch.nn.Softmax(dim=-1)).name == "softmax"
    assert get_transfer(torch.nn.Tanh()).name == "tanh"
    with pytest.raises(UnknownTransferError, match="dim=0"):
        get_transfer(torch.nn.Softmax(dim=0))


def test_unknown_name_and_bad_parameters():
    with pytest.raises(UnknownTransferError, match="unknown transfer function 'softsign'.*identity"):
        get_transfer("softsign")
    with pytest.raises(UnknownTransferError, match="unexpected parameters.*negative_slope"):
        get_transfer("sigmoid", negative_slope=0.1)
    with pytest.raises(UnknownTransferError, match="relu"):
        get_transfer("leaky_relu", negative_slope=0.0)
    with pytest.raises(UnknownTransferError, match="non-monotone"):
        get_transfer("leaky_relu", negative_slope=-0.5)
    with pytest.raises(UnknownTransferError, match="hessian_floor"):
        get_transfer("relu", hessian_floor=0)
    with pytest.raises(UnknownTransferError):
        get_transfer(3.0)  # type: ignore[arg-type]
    assert issubclass(UnknownTransferError, ValueError)


def test_names_are_normalized_and_objects_pass_through():
    assert get_transfer("Leaky-ReLU").name == "leaky_relu"
    t = get_transfer("leaky_relu", negative_slope=0.3)
    assert get_transfer(t) is t
    with pytest.raises(UnknownTransferError, match="either"):
        get_transfer(t, negative_slope=0.1)


@pytest.mark.parametrize("name,params", CONFIGS)
def test_to_dict_round_trip(name, params):
    t = get_transfer(name, **params)
    spec = t.to_dict()
    assert spec["name"] == name
    back = Transfer.from_dict(spec)
    assert back == t and back.params == t.params
    a = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(back.f(a), t.f(a))
    with pytest.raises(UnknownTransferError):
        Transfer.from_dict({"params": {}})
