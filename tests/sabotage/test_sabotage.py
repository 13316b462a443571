"""The suite catches sabotage: break one part at a time and the tests that guard it fail.

Each case runs its guarding tests in a child pytest with that part broken (tests/sabotage/
_plugin.py applies the break before collection) and requires the child to report failed
tests: a guard that still passes with its part broken guards nothing. ``-x`` stops each
child at its first failure, so the whole harness stays short. ``python -m tests.sabotage.report``
prints the table of which guarding tests failed for each break.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sabotage._catalogue import SABOTAGES
from tests.sabotage._plugin import APPLIED_MARK

ROOT = Path(__file__).resolve().parents[2]


def run_guards(name: str, stop_at_first: bool = True) -> tuple[int, str]:
    """Run the guarding tests of sabotage ``name`` in a child pytest; return (exit code, output)."""
    sabotage = SABOTAGES[name]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "tests.sabotage._plugin", "-p", "no:cacheprovider",
           "-o", "addopts=--import-mode=importlib", "-rf", *sabotage.guards]
    if stop_at_first:
        cmd.insert(4, "-x")
    env = {**os.environ, "BREGKD_SABOTAGE": name, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def failed_tests(output: str) -> list[str]:
    return re.findall(r"^FAILED (\S+)", output, flags=re.M)


@pytest.mark.parametrize("name", sorted(SABOTAGES))
def test_guards_fail_when_their_part_is_broken(name):
    code, output = run_guards(name)
    assert f"{APPLIED_MARK}: {name}" in output, f"the sabotage {name} was not applied:\n{output[-3000:]}"
    assert code == 1 and failed_tests(output), (
        f"with {SABOTAGES[name].what} broken, its guarding tests still pass (exit {code}):\n{output[-3000:]}")
