"""The library stands on its own: every public name resolves, and none pulls in web or queue code."""
from __future__ import annotations

import json
import subprocess
import sys

import bregman

# Packages that belong to the service, the workers or the client, or that the library may
# use only lazily inside one function (scikit-learn for the built-in data set).
FORBIDDEN = ["fastapi", "starlette", "celery", "kombu", "redis", "sqlalchemy", "alembic", "pydantic",
             "httpx", "typer", "rich", "sklearn", "scipy", "matplotlib", "api_schemas", "storage",
             "service", "workers", "client"]


def test_every_public_name_resolves():
    missing = [name for name in bregman.__all__ if not hasattr(bregman, name)]
    assert missing == []


def test_import_bregman_needs_only_torch_numpy_safetensors():
    code = (
        "import json, sys, bregman\n"
        "for name in bregman.__all__: getattr(bregman, name)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_unknown_name_is_an_attribute_error():
    try:
        bregman.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected AttributeError")
