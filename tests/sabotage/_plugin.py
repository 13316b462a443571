"""A pytest plugin that breaks one named part of the code before any test module imports it.

Loaded only by the harness (``-p tests.sabotage._plugin`` with ``BREGKD_SABOTAGE=<name>``); the
catalogue in ``tests/sabotage/_catalogue.py`` says what each name breaks. The patch is applied
in ``pytest_configure``, before collection, so modules that import the broken function by name
(``from x import f``) get the broken one too.
"""
from __future__ import annotations

import os

import pytest

APPLIED_MARK = "BREGKD-SABOTAGE-APPLIED"


def pytest_configure(config: pytest.Config) -> None:
    name = os.environ.get("BREGKD_SABOTAGE")
    if not name:
        return
    from tests.sabotage._catalogue import SABOTAGES

    SABOTAGES[name].apply()
    print(f"{APPLIED_MARK}: {name}", flush=True)
