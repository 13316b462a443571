"""What the sabotage harness breaks, how, and which tests guard each part.

Each break is a small replacement that keeps the program running (no crash that any test would
notice) but makes the part do nothing, or the wrong thing: exactly the kind of regression a
suite must catch. The guards are the tests (files or single tests, named so that the harness
stays short) that must then fail.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Sabotage:
    what: str
    apply: Callable[[], None]
    guards: tuple[str, ...]

    @staticmethod
    def count(output: str) -> int:
        """How many tests the child ran (from pytest's closing line)."""
        return sum(int(n) for n in re.findall(r"(\d+) (?:passed|failed|error)", output.splitlines()[-1] if output else ""))


def _direction_step() -> None:
    from bregman._pca_solver import BregmanSolver

    BregmanSolver.direction_step = lambda self, store, m, V, st, damping: (m, V, damping)
    BregmanSolver.extrapolate = lambda self, store, start, end, beta: (end[0], end[1], beta)


def _coefficient_step() -> None:
    import bregman._pca_solver as solver

    real = solver.solve_coefficients

    def frozen(*args, **kwargs):  # the coefficients stay at their start
        return real(*args, **{**kwargs, "max_steps": 0})

    solver.solve_coefficients = frozen


def _normalization() -> None:
    import torch

    import bregman._pca_solver as solver

    def identity(transfer, m, V):
        eye = torch.eye(V.shape[1], dtype=V.dtype, device=V.device)
        return eye, eye.clone()

    solver.normalizer = identity


def _divergence() -> None:
    from bregman.transfers import Sigmoid

    # the squared error of the pre-activations (the identity's divergence) instead of the
    # sigmoid's Bregman divergence: nonnegative and zero on the diagonal, so only a real check notices
    Sigmoid.divergence_elements = lambda self, a_hat, a: 0.5 * (a_hat - a) ** 2


def _tenant_filter() -> None:
    import service.routes.common as common
    from service.errors import not_found
    from storage.models import Dataset, Job, Teacher

    def any_tenant(model, kind):
        def get(db, tenant, ident):
            row = db.get(model, ident)
            if row is None:
                raise not_found(kind, ident)
            return row
        return get

    common.get_teacher = any_tenant(Teacher, "teacher")
    common.get_dataset = any_tenant(Dataset, "data set")
    common.get_job = any_tenant(Job, "job")


def _pt2_member_check() -> None:
    import io
    from pathlib import Path

    import torch

    import bregman._pt2_guard as guard

    def unchecked(source, max_bytes=None):
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        return torch.export.load(io.BytesIO(data))

    guard.load_pt2_safely = unchecked


def _pickle_refusal() -> None:
    import bregman._sniff as sniff

    sniff._is_pickle = lambda head: False


SABOTAGES: dict[str, Sabotage] = {
    "direction_step": Sabotage(
        "the (m, V) direction step and the extrapolation (no-ops)", _direction_step,
        ("tests/bregman/test_pca.py::test_transform_reproduces_the_fit_coefficients",
         "tests/bregman/test_pca.py::test_default_fit_on_digits_logits_reaches_the_best_reference",
         "tests/bregman/test_pca.py::test_default_fit_on_digits_logits_converges_within_the_default_max_iter",
         "tests/bregman/test_pca.py::test_extrapolation_takes_a_move_that_lowers_the_objective_and_refuses_one_that_does_not")),
    "coefficient_step": Sabotage(
        "the coefficient step (coefficients never leave their start)", _coefficient_step,
        ("tests/bregman/test_pca.py::test_joint_fit_is_never_worse_than_euclidean_pca", "tests/bregman/test_pca.py::test_transform_reproduces_the_fit_coefficients")),
    "normalization": Sabotage(
        "the normalization Vᵀ∇²F(m)V = I (identity)", _normalization,
        ("tests/bregman/test_pca.py::test_components_are_normalized_in_the_local_geometry", "tests/bregman/test_exported.py")),
    "divergence": Sabotage(
        "the sigmoid's divergence (squared error instead)", _divergence,
        ("tests/bregman/test_transfers.py",)),
    "tenant_filter": Sabotage(
        "the tenant filter of the object routes", _tenant_filter,
        ("tests/service/test_isolation_inprocess.py",)),
    "pt2_member_check": Sabotage(
        "the .pt2 reader (torch.export.load on the user's bytes)", _pt2_member_check,
        ("tests/security/test_pt2_members.py",)),
    "pickle_refusal": Sabotage(
        "the pickle refusal of the upload sniffer", _pickle_refusal,
        ("tests/service/test_sniff.py::test_pickle_refused",
         "tests/bregman/test_teachers.py::test_plain_pickle_with_payload_is_refused_and_payload_never_runs")),
}
