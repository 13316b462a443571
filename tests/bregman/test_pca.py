"""BregmanPCA: agreement with Euclidean PCA, optimality and normalization properties,
gauge invariance, chunked input, dtypes and array types, and errors on bad input."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bregman.pca import BregmanPCA, BregmanPCAError, NotFittedError
from bregman.transfers import NonMonotoneTransferError, get_transfer
from tests.bregman._pca_fixtures import (  # noqa: F401  (single_thread is a fixture)
    NONLINEAR_TRANSFERS,
    check_fit_invariants,
    data_for,
    digits_teacher_logits,
    low_rank_data,
    peaked_logits,
    single_thread,
)

pytestmark = pytest.mark.usefixtures("single_thread")

K = 3


def _hessian_gram(est: BregmanPCA) -> torch.Tensor:
    """Vᵀ ∇²F(m) V for a fitted estimator (float64 tensors)."""
    t = est.transfer_
    m = torch.as_tensor(est.mean_, dtype=torch.float64)
    V = torch.as_tensor(est.components_, dtype=torch.float64).T
    HV = torch.stack([t.hvp(m.unsqueeze(0), V[:, j].unsqueeze(0))[0] for j in range(V.shape[1])], 1)
    return V.T @ HV


@pytest.fixture(scope="module")
def fitted() -> dict[str, tuple[BregmanPCA, torch.Tensor, torch.Tensor]]:
    """One joint-mean fit per non-linear transfer: (estimator, data, fit coefficients)."""
    out = {}
    for name in NONLINEAR_TRANSFERS:
        A = data_for(name, n=240, d=8, seed=1)
        est = BregmanPCA(name, n_components=K, random_state=0)
        C = est.fit_transform(A)
        out[name] = (est, A, C)
    return out


# --- identity = Euclidean PCA ---------------------------------------------------------------
def test_identity_matches_scikit_learn_pca():
    from scipy.linalg import subspace_angles
    from sklearn.decomposition import PCA

    A = low_rank_data(n=300, d=12, rank=5, seed=3).numpy()
    est = BregmanPCA("identity", n_components=4).fit(A)
    sk = PCA(n_components=4).fit(A)
    angles = subspace_angles(est.components_.T, sk.components_.T)
    assert angles.max() < 1e-6
    np.testing.assert_allclose(est.mean_, sk.mean_, atol=1e-12)
    recon = sk.inverse_transform(sk.transform(A))
    sk_error = 0.5 * np.mean(np.sum((recon - A) ** 2, axis=1))
    assert est.divergence_ == pytest.approx(sk_error, rel=1e-9)
    assert est.score(A) == pytest.approx(sk_error, rel=1e-9)
    assert est.pca_divergence_ == pytest.approx(sk_error, rel=1e-9)
    np.testing.assert_allclose(est.explained_divergence_ratio_, np.cumsum(sk.explained_variance_ratio_), rtol=1e-9)
    # orthonormal rows (H = I), transform is the orthogonal projection
    np.testing.assert_allclose(est.components_ @ est.components_.T, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(np.abs(est.transform(A)), np.abs(sk.transform(A)), atol=1e-8)
    assert est.n_iter_ == 0 and est.ridge_ == 0.0


def test_identity_float_n_components_matches_scikit_learn():
    from sklearn.decomposition import PCA

    A = low_rank_data(n=300, d=12, rank=5, seed=4).numpy()
    est = BregmanPCA("identity", n_components=0.8).fit(A)
    sk = PCA(n_components=0.8).fit(A)
    assert est.n_components_ == sk.n_components_
    assert est.explained_divergence_ratio_[-1] >= 0.8


# --- properties of the non-linear fits --------------------------------------------------------
@pytest.mark.parametrize("name", NONLINEAR_TRANSFERS)
def test_joint_fit_is_never_worse_than_euclidean_pca(fitted, name):
    est, A, _ = fitted[name]
    assert est.divergence_ <= est.pca_divergence_
    assert est.divergence_ <= est.mean_only_divergence_
    # score re-projects from a cold start: the same divergence as the fit reported
    assert est.score(A) == pytest.approx(est.divergence_, rel=1e-6)


@pytest.mark.parametrize("name", NONLINEAR_TRANSFERS)
def test_components_are_normalized_in_the_local_geometry(fitted, name):
    est, _, _ = fitted[name]
    G = _hessian_gram(est)
    torch.testing.assert_close(G, torch.eye(K, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NONLINEAR_TRANSFERS)
def test_transform_reproduces_the_fit_coefficients(fitted, name):
    est, A, C_fit = fitted[name]
    C = est.transform(A)
    assert isinstance(C, torch.Tensor) and C.shape == (A.shape[0], K)
    torch.testing.assert_close(C, C_fit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NONLINEAR_TRANSFERS)
def test_components_ordered_and_explained_ratio_cumulative(fitted, name):
    est, _, C = fitted[name]
    second_moment = (C**2).mean(0)
    assert bool((second_moment[:-1] >= second_moment[1:] * (1 - 1e-6)).all())
    r = est.explained_divergence_ratio_
    check_fit_invariants(est)  # in [0, 1], non-decreasing, converged_ = the optimality test
    d0 = est.mean_only_divergence_
    assert r[-1] == pytest.approx((d0 - est.divergence_) / d0, rel=1e-12)
    assert 0 < r[-1] <= 1


@pytest.mark.parametrize("name", NONLINEAR_TRANSFERS)
def test_reconstruct_is_f_of_inverse_transform(fitted, name):
    est, A, C = fitted[name]
    pre = est.inverse_transform(C)
    out = est.reconstruct(C)
    torch.testing.assert_close(out, est.transfer_.f(pre))
    div = est.transfer_.divergence(pre, est.transfer_.remove_gauge(A)).mean()
    assert float(div) == pytest.approx(est.divergence_, rel=1e-9)


def test_history_is_monotone_and_callback_can_stop():
    A = data_for("sigmoid", n=200, d=8, seed=2)
    est = BregmanPCA("sigmoid", n_components=2, tol=0.0, max_iter=25).fit(A)
    obj = np.array([h["objective"] for h in est.history_])
    assert len(obj) >= 2 and np.all(np.diff(obj) <= 1e-12 * obj[0])
    assert all(h["elapsed_s"] >= 0 for h in est.history_)
    seen = []
    stopped = BregmanPCA("sigmoid", n_components=2, tol=0.0, callback=lambda info: seen.append(info) or True).fit(A)
    assert stopped.n_iter_ == 1 and len(seen) == 1 and set(seen[0]) >= {"iteration", "elapsed_s", "divergence"}


def test_callback_exception_aborts_the_fit():
    def cancel(info):
        raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        BregmanPCA("tanh", n_components=2, callback=cancel).fit(data_for("tanh", n=100, d=6))


def test_ridge_changes_the_divergence_by_far_less_than_a_tenth_of_a_percent():
    A = peaked_logits(n=300, d=6, seed=5)
    default = BregmanPCA("softmax", n_components=2).fit(A)
    tiny = BregmanPCA("softmax", n_components=2, ridge=1e-9).fit(A)
    assert abs(default.divergence_ - tiny.divergence_) / tiny.divergence_ < 1e-3
    assert default.ridge_ == pytest.approx(1e-7)


def test_near_one_hot_softmax_rows_give_finite_bounded_coefficients():
    A = peaked_logits(n=200, d=5, seed=6, temperature_max=40.0)
    p = torch.softmax(A, -1)
    assert float(p.max(-1).values.max()) > 1 - 1e-12  # some rows are one-hot to round-off
    est = BregmanPCA("softmax", n_components=2)
    C_fit = est.fit_transform(A)
    C = est.transform(A)
    assert torch.isfinite(C).all() and torch.isfinite(C_fit).all()
    assert float(C.abs().max()) < 1e4
    torch.testing.assert_close(C, C_fit, atol=1e-4, rtol=1e-4)
    assert est.divergence_ <= est.pca_divergence_


def test_softmax_is_invariant_to_per_row_shifts():
    A = peaked_logits(n=200, d=6, seed=7)
    shift = torch.randn(200, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 5
    # the two fits see the same centred rows up to round-off; a fit stopped at its optimality
    # tolerance (not at a fixed point) carries that round-off forward: both stop at the same
    # iteration with relative gradient r = 2.9e-4, where the parameters are known to about r
    # (the means differ by 2.4e-5), hence 1e-4, not 1e-8
    e1 = BregmanPCA("softmax", n_components=2).fit(A)
    e2 = BregmanPCA("softmax", n_components=2).fit(A + shift)
    assert e1.n_iter_ == e2.n_iter_
    torch.testing.assert_close(e1.mean_, e2.mean_, atol=1e-4, rtol=0)
    torch.testing.assert_close(e1.components_, e2.components_, atol=1e-4, rtol=0)
    torch.testing.assert_close(e1.transform(A), e1.transform(A + shift), atol=1e-9, rtol=0)
    assert e1.divergence_ == pytest.approx(e2.divergence_, rel=1e-7)
    # the gauge direction is projected out of the mean and every direction
    assert float(e1.mean_.sum().abs()) < 1e-10
    assert float(e1.components_.sum(1).abs().max()) < 1e-10


def test_centroid_mean_is_the_dual_space_centroid_and_never_worse_than_its_start():
    A = data_for("sigmoid", n=200, d=8, seed=8)
    est = BregmanPCA("sigmoid", n_components=2, mean="centroid").fit(A)
    t = get_transfer("sigmoid")
    torch.testing.assert_close(est.mean_, t.f_inv(t.f(A).mean(0)), atol=1e-12, rtol=0)
    assert est.divergence_ <= est.init_divergence_
    joint = BregmanPCA("sigmoid", n_components=2).fit(A)
    assert joint.divergence_ <= est.divergence_ * (1 + 1e-6)  # the joint mean is at least as good
    with pytest.raises(ValueError, match="not invertible.*joint"):
        BregmanPCA("relu", n_components=2, mean="centroid").fit(A)


def test_float_n_components_picks_the_smallest_k_reaching_the_share():
    A = data_for("tanh", n=200, d=8, seed=9)
    est = BregmanPCA("tanh", n_components=0.7).fit(A)
    check_fit_invariants(est)
    k = est.n_components_
    assert 2 <= k <= 7  # one direction explains less than 70 % of these rows
    # the chosen k's own fit reaches the share, the own fit of k - 1 does not
    assert est.explained_divergence_ratio_[-1] >= 0.7
    assert BregmanPCA("tanh", n_components=k - 1).fit(A).explained_divergence_ratio_[-1] < 0.7
    assert est.n_components_search_[k] >= 0.7 and est.n_components_search_[k - 1] < 0.7


# --- chunked input ---------------------------------------------------------------------------
class _Chunks:
    """A re-iterable of chunks (like bregman.capture.ChunkedActivations)."""

    def __init__(self, A: torch.Tensor, rows: int) -> None:
        self.A, self.rows = A, rows

    def __iter__(self):
        return (self.A[s : s + self.rows] for s in range(0, len(self.A), self.rows))


@pytest.mark.parametrize("name", ["leaky_relu", "softmax"])
def test_chunked_fit_equals_in_memory_fit(name, tmp_path):
    """Chunks change only the summation order of the direction statistics (round-off ~1e-15),
    so after the same iterations the results agree to far better than 1e-7."""
    A = data_for(name, n=240, d=8, seed=10)
    ref = BregmanPCA(name, n_components=K).fit(A)
    as_list = BregmanPCA(name, n_components=K).fit([A[:70], A[70:150], A[150:]])
    custom = BregmanPCA(name, n_components=K).fit(_Chunks(A, 64))
    path = tmp_path / "a.npy"
    mm = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float64, shape=tuple(A.shape))
    mm[:] = A.numpy()
    mm.flush()
    del mm
    memmap = np.load(str(path), mmap_mode="r")
    assert isinstance(memmap, np.memmap)
    from_memmap = BregmanPCA(name, n_components=K, batch_size=50).fit(memmap)
    for est in (as_list, custom, from_memmap):
        assert est.n_iter_ == ref.n_iter_
        assert est.divergence_ == pytest.approx(ref.divergence_, rel=1e-7)
        np.testing.assert_allclose(np.asarray(est.mean_), ref.mean_.numpy(), atol=1e-7)
        np.testing.assert_allclose(np.asarray(est.components_), ref.components_.numpy(), atol=1e-6)
    assert isinstance(from_memmap.components_, np.ndarray)  # numpy in, numpy out
    assert isinstance(custom.components_, torch.Tensor)


def test_one_shot_generator_is_refused():
    A = data_for("sigmoid", n=100, d=6)
    with pytest.raises(ValueError, match="one-shot.*list of chunks"):
        BregmanPCA("sigmoid", n_components=2).fit(A[s : s + 10] for s in range(0, 100, 10))


def test_chunks_that_change_between_passes_are_detected():
    A = data_for("sigmoid", n=100, d=6)

    class Shrinking:
        calls = 0

        def __iter__(self):
            Shrinking.calls += 1
            stop = 100 if Shrinking.calls == 1 else 90
            return (A[s : min(s + 10, stop)] for s in range(0, stop, 10))

    with pytest.raises(ValueError, match="same on every pass"):
        BregmanPCA("sigmoid", n_components=2).fit(Shrinking())


# --- dtypes, array types, determinism ---------------------------------------------------------
def test_float32_fit_works():
    A = data_for("sigmoid", n=300, d=8, seed=11, dtype=torch.float32)
    est = BregmanPCA("sigmoid", n_components=K)
    C = est.fit_transform(A)
    assert est.mean_.dtype == torch.float32 and C.dtype == torch.float32
    assert est.divergence_ <= est.pca_divergence_ * (1 + 1e-5)
    ref = BregmanPCA("sigmoid", n_components=K).fit(A.double())
    assert est.divergence_ == pytest.approx(ref.divergence_, rel=1e-3)
    G = _hessian_gram(est)
    torch.testing.assert_close(G, torch.eye(K, dtype=torch.float64), atol=1e-4, rtol=0)


def test_half_precision_input_is_computed_in_float32():
    A = data_for("tanh", n=120, d=6).to(torch.float16)
    est = BregmanPCA("tanh", n_components=2).fit(A)
    assert est.mean_.dtype == torch.float32
    ref = BregmanPCA("tanh", n_components=2).fit(A.float())  # the same values, given as float32
    assert est.divergence_ == pytest.approx(ref.divergence_, rel=1e-6)
    torch.testing.assert_close(est.mean_, ref.mean_, atol=1e-5, rtol=0)
    torch.testing.assert_close(est.components_, ref.components_, atol=1e-5, rtol=0)
    torch.testing.assert_close(est.transform(A), ref.transform(A.float()), atol=1e-5, rtol=0)


def test_numpy_in_numpy_out_and_tensor_in_tensor_out():
    A = data_for("leaky_relu", n=150, d=6, seed=12)
    est = BregmanPCA(get_transfer("leaky_relu", negative_slope=0.2), n_components=2).fit(A.numpy())
    assert isinstance(est.mean_, np.ndarray) and est.components_.shape == (2, 6)
    C = est.transform(A.numpy())
    assert isinstance(C, np.ndarray) and C.shape == (150, 2)
    assert isinstance(est.inverse_transform(C), np.ndarray)
    assert isinstance(est.reconstruct(C), np.ndarray)
    Ct = est.transform(A)
    assert isinstance(Ct, torch.Tensor) and Ct.device == A.device
    np.testing.assert_allclose(Ct.numpy(), C)
    assert est.transfer_.params == {"negative_slope": 0.2}


def test_fits_are_deterministic():
    A = data_for("relu", n=150, d=6, seed=13)
    e1 = BregmanPCA("relu", n_components=2, random_state=3).fit(A)
    e2 = BregmanPCA("relu", n_components=2, random_state=3).fit(A)
    assert torch.equal(e1.components_, e2.components_) and torch.equal(e1.mean_, e2.mean_)
    assert e1.hessian_floor_ == 1e-6


def test_sklearn_protocol():
    from sklearn.base import clone

    est = BregmanPCA("tanh", n_components=2, tol=1e-4)
    twin = clone(est)
    assert twin.get_params() == est.get_params()
    assert twin.set_params(n_components=3).n_components == 3
    with pytest.raises(ValueError, match="unknown parameter"):
        est.set_params(bogus=1)
    with pytest.raises(NotFittedError, match="fit"):
        est.transform(np.zeros((2, 4)))


def test_import_does_not_pull_in_scikit_learn_or_scipy():
    code = ("import sys, bregman.pca, bregman.exported, bregman.transfers; "
            "bad = [m for m in ('sklearn', 'scipy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- bad input --------------------------------------------------------------------------------
GOOD = np.random.default_rng(0).normal(size=(40, 6))


@pytest.mark.parametrize(
    "data,kwargs,message",
    [
        (GOOD[:, 0], {}, "2-D.*reshape"),
        (GOOD.reshape(40, 3, 2), {}, "2-D.*flatten"),
        (GOOD.astype(np.int64), {}, "integer dtype.*floating-point"),
        (GOOD.astype(np.complex128), {}, "complex dtype.*floating-point"),
        (GOOD.astype(object), {}, "object dtype.*floating-point"),
        (torch.ones(40, 6, dtype=torch.int32), {}, "integer dtype"),
        (np.where(np.arange(240).reshape(40, 6) == 7, np.nan, GOOD), {}, "NaN or infinite"),
        (np.where(np.arange(240).reshape(40, 6) == 7, np.inf, GOOD), {}, "NaN or infinite"),
        (GOOD[:3], {"n_components": 4}, "more samples than components"),
        (GOOD, {"n_components": 6}, "smaller than the number of features"),
        (GOOD[:, :1], {"transfer": "softmax", "n_components": 1}, "at least 2 units"),
        (GOOD, {"n_components": 1.5}, r"in \(0, 1\)"),
        (GOOD, {"n_components": 0.0}, r"in \(0, 1\)"),
        (GOOD, {"n_components": 0}, ">= 1"),
        (GOOD, {"transfer": "swishy"}, "unknown transfer"),
        (GOOD, {"mean": "median"}, "'joint' or 'centroid'"),
        (GOOD, {"ridge": -1.0}, "ridge"),
        (np.empty((0, 6)), {}, "no rows"),
        ([], {}, "empty collection"),
        ([GOOD[:20], GOOD[:20, :5]], {}, "same number of features"),
        ("data.npy", {}, "re-iterable"),
    ],
)
def test_bad_input_gives_a_value_error_that_says_what_to_do(data, kwargs, message):
    params = {"transfer": "sigmoid", "n_components": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        BregmanPCA(**params).fit(data)


def test_non_monotone_transfer_is_refused():
    with pytest.raises(NonMonotoneTransferError, match="not monotone"):
        BregmanPCA("gelu", n_components=2).fit(GOOD)


def test_transform_checks_width_and_values():
    est = BregmanPCA("sigmoid", n_components=2).fit(GOOD)
    with pytest.raises(ValueError, match="6 were expected"):
        est.transform(GOOD[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        est.transform(np.full((2, 6), np.nan))
    with pytest.raises(ValueError, match="2 were expected"):
        est.reconstruct(np.zeros((3, 3)))


class _SizedChunks(_Chunks):
    """Declares its size like bregman.capture.ChunkedActivations (n_rows, d)."""

    def __init__(self, A: torch.Tensor, rows: int, n_rows: int) -> None:
        super().__init__(A, rows)
        self.n_rows, self.d = n_rows, A.shape[1]


def test_sized_chunk_sources_are_trusted_but_checked():
    A = data_for("sigmoid", n=120, d=6, seed=14)
    ref = BregmanPCA("sigmoid", n_components=2).fit(A)
    est = BregmanPCA("sigmoid", n_components=2).fit(_SizedChunks(A, 50, 120))
    assert est.divergence_ == pytest.approx(ref.divergence_, rel=1e-9)
    with pytest.raises(ValueError, match="same on every pass"):
        BregmanPCA("sigmoid", n_components=2).fit(_SizedChunks(A, 50, 130))


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(NONLINEAR_TRANSFERS),
    seed=st.integers(0, 10_000),
    n=st.integers(12, 60),
    d=st.integers(3, 7),
    scale=st.floats(0.1, 6.0),
)
# Found by hypothesis: softmax with k = d - 1 on peaked logits. The first let the mean drift to
# where ∇²F(m) is near singular (VᵀHV off by 4e13); the second lost 5e-6 of VᵀHV to
# cancellation in the softmax Hessian-vector product.
@example(name="softmax", seed=0, n=12, d=3, scale=6.0)
@example(name="softmax", seed=116, n=12, d=3, scale=4.0)
def test_property_fit_beats_pca_and_is_normalized(name, seed, n, d, scale):
    A = data_for(name, n=n, d=d, seed=seed, scale=scale) if name != "softmax" else peaked_logits(n=n, d=d, seed=seed) * scale
    k = min(2, d - 1)
    est = BregmanPCA(name, n_components=k, max_iter=30)
    C = est.fit_transform(A)
    assert torch.isfinite(C).all()
    # The ridge may cost a little where PCA is (nearly) exact, e.g. softmax with k = d - 1 and
    # one-hot rows; without it the fit is never worse than PCA, by construction.
    assert est.divergence_ <= est.pca_divergence_ + 1e-5 * est.mean_only_divergence_
    G = _hessian_gram(est)
    torch.testing.assert_close(G, torch.eye(k, dtype=torch.float64), atol=1e-6, rtol=0)
    check_fit_invariants(est)
    exact = BregmanPCA(name, n_components=k, max_iter=30, ridge=0.0).fit(A)
    check_fit_invariants(exact)
    assert exact.divergence_ <= exact.pca_divergence_ * (1 + 1e-9) + 1e-15


# --- a float n_components is chosen from the candidates' own fits -----------------------------
def test_float_n_components_chooses_the_smallest_k_whose_own_fit_reaches_the_share():
    A = low_rank_data(n=200, d=8, rank=4, noise=0.2, seed=21)
    own = {k: BregmanPCA("sigmoid", n_components=k).fit(A).explained_divergence_ratio_[-1] for k in (2, 3)}
    assert own[2] < own[3]
    share = 0.5 * (own[2] + own[3])  # reached by a 3-direction fit, not by a 2-direction fit
    est = BregmanPCA("sigmoid", n_components=share).fit(A)
    assert est.n_components_ == 3
    searched = est.n_components_search_
    assert searched[3] >= share and searched[2] < share  # the search's own fits, k and k - 1
    assert est.explained_divergence_ratio_[-1] == pytest.approx(searched[3])
    assert est.explained_divergence_ratio_[-1] >= share  # what is returned reaches the share
    assert BregmanPCA("sigmoid", n_components=2).fit(A).explained_divergence_ratio_[-1] < share
    # a later integer fit forgets the search
    est.n_components = 2
    assert not hasattr(est.fit(A), "n_components_search_")


def test_float_n_components_uses_the_largest_k_when_the_share_is_out_of_reach(caplog):
    A = low_rank_data(n=60, d=4, rank=4, noise=0.5, seed=3)
    with caplog.at_level("WARNING", logger="bregman.pca"):
        est = BregmanPCA("tanh", n_components=0.999999999).fit(A)
    assert est.n_components_ == 3
    assert "explain only" in caplog.text


# --- the fit's end is compared with its start honestly ---------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_false_fallback_at_near_exact_float32_softmax_fits(seed, caplog):
    """k = d - 1 on peaked float32 logits: PCA is nearly exact and the ridge's cost shows. The
    fit used to compare its divergence (ridge excluded, float32 round-off ~ eps·|F| per row) with
    the start's and fell back to the start; now it keeps its own lower-objective result."""
    A = peaked_logits(n=300, d=6, seed=seed, dtype=torch.float32)
    with caplog.at_level("WARNING", logger="bregman._pca_solver"):
        est = BregmanPCA("softmax", n_components=5).fit(A)
    assert "above its start" not in caplog.text
    assert est.divergence_ < est.init_divergence_


@pytest.mark.parametrize(("n", "scale"), [(40, 1.8125), (12, 1.0), (30, 3.0)])
def test_ridge_free_joint_fit_never_ends_above_pca_where_pca_is_exact(n, scale):
    """softmax with k = d - 1: Euclidean PCA is exact to ~1e-18; a fallback to the start must
    return PCA's own coefficients, not a re-projection (which stopped at ~1e-9)."""
    A = peaked_logits(n=n, d=3, seed=0) * scale
    est = BregmanPCA("softmax", n_components=2, max_iter=30, ridge=0.0).fit(A)
    assert est.divergence_ <= est.pca_divergence_ * (1 + 1e-9) + 1e-15


def test_streamed_data_are_worked_on_in_small_blocks_whatever_the_chunk_size() -> None:
    """A chunked fit's memory is set by its work blocks; they must not grow with the chunks
    (an in-memory array keeps its large, faster blocks)."""
    from bregman._arrays import _DEFAULT_BLOCK_ELEMENTS, _STREAM_BLOCK_ELEMENTS, RowSource

    X = np.zeros((6000, 512), dtype=np.float32)
    streamed = RowSource([X[:3000], X[3000:]])
    sizes = [b.shape[0] for _, b in streamed.blocks(1024)]
    assert sum(sizes) == 6000 and max(sizes) * 1024 <= _STREAM_BLOCK_ELEMENTS
    in_memory = [b.shape[0] for _, b in RowSource(X).blocks(1024)]
    assert sum(in_memory) == 6000 and max(in_memory) == _DEFAULT_BLOCK_ELEMENTS // 1024 > max(sizes)


def test_a_chunked_fit_screens_its_held_start_in_stream_sized_blocks(monkeypatch) -> None:
    """Regression (session 12): the held-start screen polished its 2,000-row subsample as one
    block, whatever the source's blocks; on fit_speed's (a) the chunked fit then held 117 MiB
    above imports against 83 MiB with stream-sized blocks (target: a quarter of the in-memory
    fit's 349). Every coefficient solve of a chunked fit, screen included, sees one block."""
    import bregman._pca_solver as solver

    A = _leaky_layer_rows(8000, 32, seed=0).float().numpy()
    seen = []
    real = solver.solve_coefficients

    def spy(transfer, X, *args, **kwargs):
        seen.append(X.shape[0])
        return real(transfer, X, *args, **kwargs)

    monkeypatch.setattr(solver, "solve_coefficients", spy)
    # blocks of 500 rows (streamed blocks are that small where rows are wide: 488 on (a))
    est = BregmanPCA("leaky_relu", n_components=4, batch_size=500).fit([A[:5000], A[5000:]])
    assert est.start_screen_["rows"] == 2000  # the screen ran
    assert seen and max(seen) == 500, max(seen)


@pytest.mark.parametrize("d", [7, 300])  # one product; four column blocks, the last narrower
def test_the_block_triangle_scatter_equals_the_full_product(d) -> None:
    from bregman._pca_solver import _centered_scatter

    g = torch.Generator().manual_seed(d)
    X = torch.randn(5000, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64) + 2
    center = X.mean(0)
    S = _centered_scatter(X, center)
    ref = (X - center).T @ (X - center)
    torch.testing.assert_close(S, ref, rtol=1e-12, atol=1e-9)
    if d >= 256:  # the lower triangle is the upper one's copy
        assert torch.equal(S, S.T)


def test_max_components_bounds_the_share_search_and_returns_the_capped_fit():
    A = low_rank_data(n=200, d=8, rank=6, noise=0.2, seed=22)
    free = BregmanPCA("sigmoid", n_components=0.99).fit(A)
    assert free.n_components_ > 3  # the share needs more than the cap below
    est = BregmanPCA("sigmoid", n_components=0.99, max_components=3).fit(A)
    assert est.n_components_ == 3
    assert max(est.n_components_search_) == 3  # no fit above the cap was made
    assert est.explained_divergence_ratio_[-1] < 0.99
    # the capped search's fit against a fit at k = 3 from its own starts (an independent reference)
    direct = BregmanPCA("sigmoid", n_components=3).fit(A)
    assert est.divergence_ <= direct.divergence_ * (1 + 1e-3)
    # a cap the share does not need chooses the same k (the search path, and so the warm start
    # of the k = 6 fit, differ: 4 -> 6 instead of 4 -> 7 -> 6, hence no bitwise equality)
    loose = BregmanPCA("sigmoid", n_components=0.99, max_components=6).fit(A)
    assert loose.n_components_ == free.n_components_ == 6
    assert loose.divergence_ == pytest.approx(free.divergence_, rel=1e-5)
    with pytest.raises(BregmanPCAError, match="max_components"):
        BregmanPCA("sigmoid", n_components=0.9, max_components=0).fit(A)


def test_a_float32_softmax_fit_reaches_the_float64_optimum():
    """Softmax fits compute in float64 whatever the input's dtype: in float32 this fit stopped
    after 50 iterations 1.6 % above the float64 optimum (optimality 0.027, unconverged), its
    steps' decreases below the objective's round-off; k = 4 ended 16 % above."""
    from benchmarks._fit_workloads import get_spec, make_data

    X = make_data(get_spec("b", n=400))  # peaked 100-class logits, float32
    assert X.dtype == torch.float32
    f32 = BregmanPCA("softmax", n_components=8).fit(X)
    f64 = BregmanPCA("softmax", n_components=8).fit(X.double())
    assert f64.converged_ and f32.converged_
    assert f32.divergence_ <= f64.divergence_ * (1 + 1e-6)
    # the learned attributes keep the input's dtype
    assert f32.mean_.dtype == torch.float32 and f32.components_.dtype == torch.float32
    assert f32.transform(X[:5]).dtype == torch.float32


def test_share_search_does_not_overshoot_by_doubling_and_still_finds_the_smallest_k():
    """From k = 8 on, the search's next candidate extrapolates the missed fit's prefix curve
    (doubling fitted k = 32 here, the costliest fit of the search, where 18 is needed)."""
    g = torch.Generator().manual_seed(3)
    n, d = 400, 48
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    A = (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.88 ** torch.arange(d)) @ Q.T * 2 + 0.2
    est = BregmanPCA("leaky_relu", n_components=0.99).fit(A)
    k, searched = est.n_components_, est.n_components_search_
    assert searched[k] >= 0.99 > searched[k - 1]
    assert max(searched) < 32 and max(searched) <= 1.25 * k
    # independent fits at k and k - 1 from their own starts agree on the choice
    own = {j: BregmanPCA("leaky_relu", n_components=j).fit(A).explained_divergence_ratio_[-1] for j in (k - 1, k)}
    assert own[k] >= 0.99 > own[k - 1]


def test_float_n_components_on_many_rows_searches_a_subsample_and_still_reaches_the_share(monkeypatch):
    import bregman.pca as pca_module

    A = low_rank_data(n=400, d=8, rank=5, noise=0.3, seed=5)
    monkeypatch.setattr(pca_module, "SEARCH_ROWS", 16)  # a subsample that overfits: few k look enough
    share = 0.97
    est = BregmanPCA("sigmoid", n_components=share).fit(A)
    assert est.n_components_search_rows_ == 16
    sub_k = min(k for k, v in est.n_components_search_.items() if v >= share)
    assert est.n_components_ >= sub_k
    # the returned fit is on all rows and reaches the share there
    assert est.n_samples_seen_ == 400 and est.explained_divergence_ratio_[-1] >= share
    # raised on all rows from the subsample's choice: on all rows, one direction fewer than the
    # returned k does not reach the share, unless k is the subsample's own choice
    below = BregmanPCA("sigmoid", n_components=est.n_components_ - 1).fit(A).explained_divergence_ratio_[-1]
    assert below < share or est.n_components_ == sub_k
    small = BregmanPCA("sigmoid", n_components=share).fit(A[:16])
    assert small.n_components_search_rows_ == 16  # small inputs: the search runs on all rows


@pytest.mark.parametrize("name", ["identity", "sigmoid"])
def test_fit_accepts_tensors_that_require_grad(name):
    """Activations straight from a model often carry requires_grad; the fit treats them as data."""
    A = torch.as_tensor(low_rank_data(n=120, d=6, rank=3, noise=0.2, seed=2)).requires_grad_(True)
    est = BregmanPCA(name, n_components=2).fit(A)
    chunked = BregmanPCA(name, n_components=2).fit([A[:60], A[60:]])
    assert est.divergence_ == pytest.approx(chunked.divergence_, rel=1e-5)
    assert not est.transform(A).requires_grad


# --- globalization: the default fit reaches the best of independent references (issue 12) ----
def _random_start_fits(A: torch.Tensor, name: str, k: int, starts: int = 5, seed: int = 0) -> list[float]:
    from benchmarks.fit_optimum import random_start_fits

    return random_start_fits(A, name, k, starts=starts, seed=seed)


def _assert_default_reaches_the_references(A: torch.Tensor, name: str, k: int, random_starts: int = 5) -> BregmanPCA:
    est = BregmanPCA(name, n_components=k).fit(A)
    check_fit_invariants(est)
    refs = {"pca": est.pca_divergence_}
    if random_starts:
        refs["random"] = min(_random_start_fits(A, name, k, starts=random_starts))
    if get_transfer(name).invertible:
        centroid = BregmanPCA(name, n_components=k, mean="centroid").fit(A)
        check_fit_invariants(centroid)
        refs["centroid"] = centroid.divergence_
        # the joint model contains the centroid model, and the centroid fit is one of the starts
        assert est.divergence_ <= centroid.divergence_ * (1 + 1e-9)
    best = min(refs.values())
    # absolute slack: the ridge's own scale λ·mean‖c‖². At k = d - 1 on softmax rows PCA is
    # exact (5e-18) while the fit minimizes divergence + (λ/2)‖c‖² and ends near 1e-7
    # (λ = 1e-7): the objective, not the divergence, is what it lowers (hypothesis found it)
    C = torch.as_tensor(est.transform(A))
    slack = max(1e-12, est.ridge_ * max(1.0, float((C * C).sum(-1).mean())))
    assert est.divergence_ <= (1 + 1e-3) * best + slack, (est.divergence_, refs, slack)
    return est


@pytest.fixture(scope="module")
def digits_logits() -> torch.Tensor:
    return digits_teacher_logits()


@pytest.mark.parametrize("k", [1, 2])  # k = 3..9: the table in issue 12's note (55 s for k = 3 alone)
def test_default_fit_on_digits_logits_reaches_the_best_reference(digits_logits, k):
    """Pinned regression (issue 12): on a digits classifier's peaked logits the PCA start alone
    stopped 27x above the centroid-held fit, with converged_=True."""
    est = _assert_default_reaches_the_references(digits_logits, "softmax", k)
    assert est.divergence_ < 0.5 * est.pca_divergence_  # far below Euclidean PCA of the logits
    assert set(est.starts_) == {"pca", "centroid", "centroid_then_joint"}
    assert est.divergence_ == pytest.approx(min(est.starts_.values()), rel=1e-12)


def _leaky_layer_rows(n: int, d: int, seed: int) -> torch.Tensor:
    """Pre-activations of a random leaky-ReLU layer on 6-dim inputs (fit_speed's workload (d)
    in small): a curved low-dimensional cloud, many units mostly below zero."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(6, 24, generator=g, dtype=torch.float64) / 6 ** 0.5
    spectrum = (torch.arange(1, 25, dtype=torch.float64) ** -0.7).unsqueeze(1)
    w2 = 2 * torch.randn(24, d, generator=g, dtype=torch.float64) * spectrum
    b2 = 0.5 * torch.randn(d, generator=g, dtype=torch.float64) - 0.3
    h = torch.nn.functional.leaky_relu(torch.randn(n, 6, generator=g, dtype=torch.float64) @ w1 + 0.3, 0.01)
    return h @ w2 + b2 + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)


def test_a_held_start_that_loses_on_the_screen_is_not_polished_and_the_fit_stays_below_it():
    """On 8,000 rows the centroid-held start is polished on 2,000 of them first; here it ends
    far above the PCA start's fit on the same rows, so it is not polished on all rows, and the
    result is still below the centroid fit polished on all rows (the guarantee the start is for)."""
    A = _leaky_layer_rows(8000, 32, seed=0)
    est = BregmanPCA("leaky_relu", n_components=4).fit(A)
    check_fit_invariants(est)
    screen = est.start_screen_
    assert screen["rows"] == 2000 and screen["beaten"] is True and screen["z"] > 3
    assert screen["centroid"] > screen["pca"]
    assert set(est.starts_) == {"pca"}
    centroid = BregmanPCA("leaky_relu", n_components=4, mean="centroid").fit(A)
    assert est.divergence_ <= centroid.divergence_
    # the screen's estimate of the first start is the fit's own divergence on a share of rows
    assert screen["pca"] == pytest.approx(est.divergence_, rel=0.1)


def test_a_held_start_hidden_by_the_subsample_optimism_loses_the_second_screen(monkeypatch):
    """Many parameters per screened row (fit_speed's (a) in small: 48 x 17 per row of a
    500-row screen): the held start's own optimum on the subsample looks as good as the first
    fit re-projected there (z <= 3), so the safe test cannot tell; against the first start's
    fit polished on the same rows it loses clearly, and it is not polished on all rows, where it
    indeed ends above (session 12; on (a) itself this saved 12 of 30 s)."""
    import dataclasses

    import bregman._pca_solver as solver
    from benchmarks._fit_workloads import SPECS, make_data

    monkeypatch.setattr(solver, "_SCREEN_ROWS", 500)
    A = make_data(dataclasses.replace(SPECS["a"], n=2000, d=48, k=16), seed=0, dtype=torch.float64)
    est = BregmanPCA("leaky_relu", n_components=16).fit(A)
    check_fit_invariants(est)
    screen = est.start_screen_
    assert screen["rows"] == 500 and screen["z"] <= 3  # the safe test alone would polish it
    assert screen["z_polished"] > 3 and screen["beaten"] is True
    assert screen["pca_polished"] < screen["pca"]  # the subsample's own optimum is optimistic
    assert set(est.starts_) == {"pca"}
    centroid = BregmanPCA("leaky_relu", n_components=16, mean="centroid").fit(A)
    assert est.divergence_ < centroid.divergence_


def test_a_held_start_level_on_the_screen_is_polished_on_all_rows():
    """Rows above zero everywhere (leaky ReLU's linear side): the dual centroid is the mean,
    both starts reach the same optimum, the screen cannot tell them apart (the held fit on the
    subsample is even a little optimistic), so the held start is polished on all rows."""
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(24, 3, generator=g, dtype=torch.float64)
    A = 20 + torch.randn(8000, 3, generator=g, dtype=torch.float64) @ basis.T
    A = A + 0.3 * torch.randn(8000, 24, generator=g, dtype=torch.float64)
    assert float(A.min()) > 0
    est = BregmanPCA("leaky_relu", n_components=3).fit(A)
    check_fit_invariants(est)
    assert est.start_screen_["beaten"] is False and est.start_screen_["z"] <= 3
    assert {"pca", "centroid"} <= set(est.starts_)
    assert est.divergence_ == pytest.approx(min(est.starts_.values()), rel=1e-12)


def test_relu_rows_with_few_active_units_converge_to_the_best_reference():
    """Pinned regression (session 10): ReLU rows from mostly dead to mostly active (a conv map's
    positions look like this). The joint step's model took the rows' coefficient Hessians at
    the ReLU floor (1e-6), its coefficient responses were ~1e6 too large, and the fit crept:
    100 iterations, not converged (optimality 0.106), divergence 0.7658. With the model floored
    at 1e-3 it converges within the default max_iter, within 1 % of the best of two random
    starts run to a tight tolerance (the unfloored fit: 5.7 % above it). A ReLU fit's objective is
    piecewise quadratic with nearby local optima: here one random start ends 0.25 % below the
    default, so the 1e-3 bar of the smooth transfers does not apply."""
    from benchmarks.relu_fit import relu_layer_rows

    A = relu_layer_rows(1200, 24, 8, seed=1)
    est = BregmanPCA("relu", n_components=6).fit(A)
    check_fit_invariants(est)
    assert est.converged_ and est.n_iter_ < est.max_iter
    best = min(min(_random_start_fits(A, "relu", 6, starts=2)), est.pca_divergence_)
    assert est.divergence_ <= 1.01 * best, (est.divergence_, best)


def test_small_data_polish_both_starts_without_a_screen(digits_logits):
    est = BregmanPCA("softmax", n_components=1).fit(digits_logits)
    assert est.start_screen_ == {}
    assert {"pca", "centroid"} <= set(est.starts_)


@pytest.mark.parametrize("k", [1, 3])
def test_default_fit_on_digits_logits_converges_within_the_default_max_iter(digits_logits, k):
    est = BregmanPCA("softmax", n_components=k).fit(digits_logits)
    assert est.converged_ and est.optimality_ <= est.optimality_tol_
    assert est.n_iter_ <= 2 * est.max_iter  # each start within max_iter (the kept one: two phases)


@settings(max_examples=6, deadline=None)
@given(
    name=st.sampled_from(NONLINEAR_TRANSFERS),
    seed=st.integers(0, 10_000),
    n=st.integers(20, 60),
    d=st.integers(3, 6),
    k=st.integers(1, 2),
)
@example(name="softmax", seed=3, n=40, d=5, k=1)
@example(name="leaky_relu", seed=0, n=60, d=6, k=2)
def test_property_default_fit_reaches_the_best_of_centroid_and_pca(name, seed, n, d, k):
    """Random starts are not a reference here: on small synthetic logits (e.g. softmax, seed 3,
    n 40, d 5, k 1) one of five random starts found a basin 9 % below the default's two starts
    (reported in issue 12's note; the digits pins above do hold against random starts)."""
    A = data_for(name, n=n, d=d, seed=seed)
    _assert_default_reaches_the_references(A, name, min(k, d - 1), random_starts=0)


# --- honest convergence ----------------------------------------------------------------------
def _independent_optimality(est: BregmanPCA, A: torch.Tensor, C: torch.Tensor) -> float:
    """sqrt(gᵀH⁻¹g / 2L) from autograd's gradient in (V, m) and per-unit Hessian blocks built
    by hand (element-wise transfer), at the returned mean, directions and coefficients."""
    tr = est.transfer_
    m = est.mean_.clone().requires_grad_(True)
    V = est.components_.T.clone().requires_grad_(True)
    A_hat = m + C @ V.T
    L = tr.divergence(A_hat, A).sum() + 0.5 * est.ridge_ * (C * C).sum()
    gV, gm = torch.autograd.grad(L, (V, m))
    G = torch.cat([gV, gm.unsqueeze(1)], 1)  # (d, k + 1)
    Z = torch.cat([C, torch.ones_like(C[:, :1])], 1)
    h = tr.hessian_diag(A_hat.detach())
    H = torch.einsum("nj,na,nb->jab", h, Z, Z)
    x = torch.linalg.solve(H, G.unsqueeze(-1)).squeeze(-1)
    total = float(L.detach()) + A.shape[0] * 1e-3 * est.pca_divergence_
    return (float((G * x).sum()) / (2 * total)) ** 0.5


def _independent_reduced_optimality(est: BregmanPCA, A: torch.Tensor, C: torch.Tensor) -> float:
    """sqrt(gᵀH⁺g / 2L) in the metric of the reduced Hessian (the coefficients follow (V, m)):
    the exact Schur complement ``Σ_n H_θθ − H_θc H_cc⁻¹ H_cθ`` of per-row Hessians from
    torch.func (no conjugate gradients, no linearized response), restricted to directions
    whose columns leave span(V) (and, for softmax, sum to 0 over the units)."""
    from torch.func import hessian, vmap

    tr, lam = est.transfer_, est.ridge_
    m, V = est.mean_.to(torch.float64), est.components_.T.to(torch.float64)
    A, C = A.to(torch.float64), C.to(torch.float64)
    d, k = V.shape
    theta = torch.cat([V, m.unsqueeze(1)], 1).reshape(-1)

    def row_loss(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        th, c = x[: theta.numel()].reshape(d, k + 1), x[theta.numel():]
        a_hat = th[:, k] + th[:, :k] @ c
        return tr.divergence(a_hat.unsqueeze(0), a.unsqueeze(0)).sum() + 0.5 * lam * (c * c).sum()

    X = torch.cat([theta.expand(A.shape[0], -1), C], 1)
    H = vmap(hessian(row_loss))(X, A)  # (N, p + k, p + k)
    p = theta.numel()
    Htt, Htc, Hcc = H[:, :p, :p], H[:, :p, p:], H[:, p:, p:]
    H_red = (Htt - Htc @ torch.linalg.solve(Hcc, Htc.transpose(1, 2))).sum(0)
    th = theta.clone().requires_grad_(True)
    A_hat = th.reshape(d, k + 1)[:, k] + C @ th.reshape(d, k + 1)[:, :k].T
    L = tr.divergence(A_hat, A).sum() + 0.5 * lam * (C * C).sum()
    (g,) = torch.autograd.grad(L, th)
    Q, _ = torch.linalg.qr(V)
    keep = torch.eye(d, dtype=torch.float64) - Q @ Q.T
    if not tr.elementwise:  # softmax ignores per-row shifts: directions sum to 0 over units
        keep = keep - keep.sum(0, keepdim=True) / d
    Pk = torch.kron(keep, torch.eye(k + 1, dtype=torch.float64))
    Hp, gp = Pk @ H_red @ Pk.T, Pk @ g
    ev, U = torch.linalg.eigh(0.5 * (Hp + Hp.T))
    use = ev > 1e-9 * ev.max()
    z = U[:, use].T @ gp
    total = float(L.detach()) + A.shape[0] * 1e-3 * est.pca_divergence_
    return (float((z * z / ev[use]).sum()) / (2 * total)) ** 0.5


@pytest.mark.parametrize("k", [6, 8])
def test_the_measure_on_digits_logits_is_the_exact_reduced_one(digits_logits, k):
    """Pinned regression (session 11): at k = 6 and 8 the fit stopped "converged" on the
    per-unit measure (2.5e-3 and 3.0e-3 against the tolerance 3.2e-3) where the exact reduced
    measure read 0.050 and 0.052 — a valley where a change of V is compensated by C, with
    0.75 % and 0.3 % of the divergence still to go. The reported measure is now the larger of
    the two, matching exact Schur complements, so "converged" means the valley is crossed."""
    est = BregmanPCA("softmax", n_components=k).fit(digits_logits)
    check_fit_invariants(est)
    C = torch.as_tensor(est.transform(digits_logits))
    expected = max(_independent_optimality(est, digits_logits, C),
                   _independent_reduced_optimality(est, digits_logits, C))
    assert est.optimality_ == pytest.approx(expected, rel=1e-2)


def test_converged_is_false_exactly_when_the_optimality_measure_misses_its_tolerance():
    A = data_for("sigmoid", n=200, d=8, seed=31)
    short = BregmanPCA("sigmoid", n_components=2, max_iter=1, tol=1e-8, mean="centroid").fit(A)
    check_fit_invariants(short)
    assert not short.converged_ and short.optimality_ > short.optimality_tol_
    full = BregmanPCA("sigmoid", n_components=2).fit(A)
    check_fit_invariants(full)
    assert full.converged_ and full.optimality_ <= full.optimality_tol_ == pytest.approx(full.tol ** 0.5)
    # the measure itself, recomputed independently at what the fit returned
    C = torch.as_tensor(full.transform(A))
    expected = max(_independent_optimality(full, A, C), _independent_reduced_optimality(full, A, C))
    assert full.optimality_ == pytest.approx(expected, rel=1e-3, abs=1e-7)
    # run on to the short fit's own tolerance, the measure falls below it and far below the
    # short fit's (the default fit stops as soon as it is under sqrt(1e-5), so it is not compared)
    tight = BregmanPCA("sigmoid", n_components=2, tol=1e-8).fit(A)
    assert tight.converged_ and tight.optimality_ <= tight.optimality_tol_ == pytest.approx(1e-4)
    assert short.optimality_ > 10 * tight.optimality_


def test_pca_divergence_matches_scikit_learn_pca_scored_by_hand():
    from sklearn.decomposition import PCA

    A = data_for("sigmoid", n=150, d=7, seed=32)
    est = BregmanPCA("sigmoid", n_components=3).fit(A)
    a = A.numpy()
    rec = PCA(n_components=3).fit(a).inverse_transform(PCA(n_components=3).fit(a).transform(a))
    p, q = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-rec))
    kl = np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), axis=1).mean()
    assert est.pca_divergence_ == pytest.approx(kl, rel=1e-8)
    L = peaked_logits(n=150, d=6, seed=33)
    soft = BregmanPCA("softmax", n_components=2).fit(L)
    centred = (L - L.mean(1, keepdim=True)).numpy()
    rec = PCA(n_components=2).fit(centred).inverse_transform(PCA(n_components=2).fit(centred).transform(centred))
    logp = centred - np.log(np.exp(centred).sum(1, keepdims=True))
    logq = rec - np.log(np.exp(rec).sum(1, keepdims=True))
    assert soft.pca_divergence_ == pytest.approx(np.mean(np.sum(np.exp(logp) * (logp - logq), 1)), rel=1e-8)


def test_an_unconverged_fit_puts_a_warning_into_the_job_metrics():
    from workers.representation import convergence_warnings

    A = data_for("sigmoid", n=200, d=8, seed=31)
    short = BregmanPCA("sigmoid", n_components=2, max_iter=1, tol=1e-8, mean="centroid").fit(A)
    (warning,) = convergence_warnings(short, 1)
    assert "did not converge in 1 iterations" in warning and "solver.max_iter=200" in warning
    assert f"{short.optimality_:.3g} > tol {short.optimality_tol_:.3g}" in warning
    assert convergence_warnings(BregmanPCA("sigmoid", n_components=2).fit(A), 100) == []


def test_extrapolation_takes_a_move_that_lowers_the_objective_and_refuses_one_that_does_not():
    """BregmanSolver.extrapolate on a line through the optimum: from θ* + u to θ* + u/2, one more
    move of the same length lands on θ* (kept, β grows); from θ* + u/2 to θ* + u it would
    leave (refused, β shrinks, the end point is returned unchanged)."""
    from bregman._arrays import RowSource
    from bregman._pca_solver import BregmanSolver, CoefStore, SolverOptions, moments

    A = data_for("sigmoid", n=150, d=6, seed=41)
    tr, k = get_transfer("sigmoid"), 2
    src = RowSource(A)
    mom = moments(src, tr)
    opts = SolverOptions(ridge=1e-7, max_iter=100, tol=1e-12, newton_steps=5, polish_steps=50, joint_mean=True,
                         callback=None, generator=torch.Generator().manual_seed(0), multi_start=False)
    solver = BregmanSolver(src, tr, k, opts)
    res = solver.run(mom)
    g = torch.Generator().manual_seed(1)
    um, uV, uC = (0.05 * torch.randn(*shape, generator=g, dtype=A.dtype) for shape in ((6,), (6, k), (150, k)))

    def store_of(C):
        s = CoefStore(150, k, dtype=A.dtype, device=A.device, on_disk=False)
        s.set(0, 150, C)
        return s

    def point(a):
        return res.mean + a * um, res.V + a * uV, store_of(res.coefficients + a * uC)

    m0, V0, s0 = point(1.0)
    m1, V1, s1 = point(0.5)
    m, V, beta = solver.extrapolate(s1, (m0, V0, s0), (m1, V1), 1.0)
    torch.testing.assert_close(m, res.mean)
    torch.testing.assert_close(V, res.V)
    torch.testing.assert_close(s1.all(), res.coefficients)
    assert beta > 1.0
    m0, V0, s0 = point(0.5)
    m1, V1, s1 = point(1.0)
    m, V, beta = solver.extrapolate(s1, (m0, V0, s0), (m1, V1), 1.0)
    assert torch.equal(m, m1) and torch.equal(V, V1) and beta < 1.0
    torch.testing.assert_close(s1.all(), res.coefficients + uC)


def test_explained_shares_on_many_rows_come_from_a_subsample_close_to_all_rows(monkeypatch):
    """Above _PREFIX_ROWS rows the prefixes are re-projected on evenly spaced rows: the curve
    stays in [0, 1], nondecreasing, ends at the fit's own share, and is close to the one
    re-projected on every row (which the solver computes when the limit is lifted)."""
    import bregman._pca_solver as solver

    A = data_for("leaky_relu", n=6000, d=10, seed=41)
    sub = BregmanPCA("leaky_relu", n_components=4).fit(A)
    check_fit_invariants(sub)
    monkeypatch.setattr(solver, "_PREFIX_ROWS", 10**9)
    full = BregmanPCA("leaky_relu", n_components=4).fit(A)
    check_fit_invariants(full)
    assert sub.divergence_ == full.divergence_ and sub.explained_divergence_ratio_[-1] == full.explained_divergence_ratio_[-1]
    # 3000 of 6000 rows: a sampling error of about 1 point of share (measured 0.011 at j = 1)
    np.testing.assert_allclose(sub.explained_divergence_ratio_, full.explained_divergence_ratio_, atol=0.02)
    assert not np.array_equal(sub.explained_divergence_ratio_[:-1], full.explained_divergence_ratio_[:-1])


def _placed(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of ``t`` that starts ``offset`` elements into a fresh buffer (another address,
    the same values)."""
    buf = torch.zeros(t.numel() + offset, dtype=t.dtype)
    view = buf[offset:].view(t.shape)
    view.copy_(t)
    return view


def test_share_search_warm_start_does_not_depend_on_where_its_inputs_lie_in_memory():
    """The share search's warm start (a smaller fit's directions completed by the next PCA
    directions) is the same to the last bit wherever the smaller fit's directions are stored.
    It projected with torch.linalg.lstsq, whose answer (MKL's gelsy) moved in the last bits
    with the inputs' addresses: 9 distinct starts over 32 placements, so the same search in one
    process ended at fits 1e-5 apart and auto's student differed from bregman's."""
    from types import SimpleNamespace

    from bregman._pca_solver import RowSource, moments

    A = low_rank_data(n=300, d=48, rank=12, noise=0.3, seed=2)
    transfer = get_transfer("leaky_relu")
    mom = moments(RowSource(A), transfer)
    small = BregmanPCA(transfer, n_components=4).fit(A)
    mean, V = small._m, small._V
    starts = set()
    for offset in range(0, 64, 2):  # every 16 bytes: aligned and unaligned to cache lines
        start = BregmanPCA._warm_start({4: SimpleNamespace(mean=mean, V=_placed(V, offset))}, 8, mom, transfer)
        starts.add(start[1].numpy().tobytes())
    assert len(starts) == 1
    assert start[1].shape == (48, 8) and torch.equal(start[1][:, :4], V)


def test_a_share_search_repeated_in_one_process_is_bitwise_identical():
    """The same float n_components fit three times, with allocations between them moving
    where each fit's arrays lie: the same k, directions and divergence to the last bit."""
    A = low_rank_data(n=400, d=48, rank=20, noise=0.2, seed=4)
    fits, ballast = [], []
    for i in range(3):
        fits.append(BregmanPCA("leaky_relu", n_components=0.99, random_state=0).fit(A))
        ballast.append(torch.empty(1000 * i + 17))  # shift later allocations
    first = fits[0]
    for other in fits[1:]:
        assert other.n_components_ == first.n_components_
        assert other.divergence_ == first.divergence_
        assert torch.equal(other.components_, first.components_) and torch.equal(other.mean_, first.mean_)
