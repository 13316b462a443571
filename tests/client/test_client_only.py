"""The client installs and runs without the library's or the service's dependencies.

``pip install '.[client]'`` must bring httpx, pydantic, typer and rich only (no torch). Two checks:
the declared dependencies of the ``client`` extra (followed through ``bregkd[...]`` references),
and a run of the CLI and the Python client in a process where only what that extra brings can be
imported: every other third-party module (torch, numpy, sqlalchemy, ...) fails to import, as it
would in a client-only environment.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
HEAVY = {"torch", "numpy", "safetensors", "sqlalchemy", "celery", "fastapi", "scikit-learn", "matplotlib"}


def _declared(extras: list[str]) -> set[str]:
    """Distribution names the project declares for these extras (self-references followed)."""
    names: set[str] = set()
    todo, seen = [None, *extras], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]:
            req = Requirement(text)
            if req.name == PROJECT["name"]:
                todo += sorted(req.extras)
            else:
                names.add(req.name.lower())
    return names


def _closure(names: set[str]) -> set[str]:
    """The installed distributions these pull in, following their own (non-extra) requirements."""
    out, todo = set(), list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in out:
            continue
        out.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def test_the_client_extra_declares_no_library_or_service_dependency():
    client = _declared(["client"])
    assert {"httpx", "pydantic", "typer", "rich"} <= client
    assert not client & HEAVY, client & HEAVY
    assert {"torch", "numpy", "safetensors"} <= _declared(["lib"])
    # the workers bring the library; the API process does not need it
    assert "torch" in _declared(["worker"]) and "torch" in _declared(["dev"])
    assert not _declared(["service"]) & {"torch", "numpy", "safetensors"}


# Runs in a child process: imports of modules outside the allowed set fail, like in a client-only venv.
CHILD = r'''
import importlib.abc, json, sys
allowed = set(json.loads(sys.argv[1]))
attempted = []
class OnlyTheClientsDependencies(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in allowed or top.startswith("_"):
            return None
        attempted.append(top)
        raise ImportError(f"{top} is not installed in a client-only environment")
sys.meta_path.insert(0, OnlyTheClientsDependencies())

import httpx
from typer.testing import CliRunner
from client.cli import app
from client.api import BregkdClient

out = {}
for args in (["--help"], ["distill", "--help"], ["jobs", "show", "--help"]):
    r = CliRunner().invoke(app, args)
    out[" ".join(args)] = [r.exit_code, r.output[:200]]
job = {"id": "job_1", "kind": "representation", "state": "succeeded", "spec": {}, "progress": {"fraction": 1.0},
       "created_at": "2026-12-01T10:00:00Z"}
transport = httpx.MockTransport(lambda request: httpx.Response(200, json=job))
with BregkdClient("http://svc", "k", transport=transport) as api:
    out["get_job"] = api.get_job("job_1").state.value
out["refused"] = sorted(set(attempted))
print(json.dumps(out))
'''


def test_cli_and_client_run_with_only_the_client_extras_modules():
    dists = _closure(_declared(["client"]))
    modules = {top for top, owners in md.packages_distributions().items()
               if {o.lower().replace("_", "-") for o in owners} & dists}
    modules |= {"client", "api_schemas"}  # the project's own packages the client uses
    assert not modules & {"torch", "numpy", "sqlalchemy", "bregman", "service", "storage", "workers"}
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(sorted(modules))], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for args in ("--help", "distill --help", "jobs show --help"):
        code, text = out[args]
        assert code == 0 and text.lstrip().startswith("Usage:"), (args, text)
    assert out["get_job"] == "succeeded"
    # nothing the client needs was refused; optional extras a library probes for may be
    assert not set(out["refused"]) & (HEAVY | {"bregman", "service", "storage", "workers"}), out["refused"]
    assert re.fullmatch(r"[\w, ]*", ", ".join(out["refused"]))
