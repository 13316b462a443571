"""The Dockerfile, docker-compose.yml and .env.example name only things that exist.

There is no Docker engine on the development machine, so these checks stand in for a build:
every command resolves (modules importable, Celery and ASGI apps present, console scripts
declared), every ``BREGKD_*`` variable is a settings field, every ``COPY`` source exists, and
the pinned torch matches ``pyproject.toml``.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENV_EXAMPLE = (ROOT / ".env.example").read_text()

BREGKD_SERVICES = ["migrate", "api", "worker", "worker-gpu"]
#: executables that come from a declared dependency, and the distribution that provides them
DEPENDENCY_SCRIPTS = {"uvicorn": "uvicorn", "celery": "celery"}


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example line {line!r} is not KEY=VALUE"
            pairs[key.strip()] = value.strip()
    return pairs


def _declared_requirements() -> set[str]:
    reqs = list(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        reqs += extra
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def _importable_attr(spec: str) -> object:
    module, _, attr = spec.partition(":")
    mod = importlib.import_module(module)
    obj = mod
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def check_command(argv: list[str]) -> None:
    """Fail unless the command's program and the modules or apps it names exist in this project."""
    assert argv, "empty command"
    argv = [re.sub(r"\$\{[^}]*\}", "1", a) for a in argv]  # compose interpolation: a number here
    program, args = argv[0], argv[1:]
    scripts = PYPROJECT["project"]["scripts"]
    if program in ("python", "python3"):
        assert args[0] == "-m", f"python commands must run a module with -m: {argv}"
        module = args[1]
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"module {module} of {argv} does not exist"
        if module in DEPENDENCY_SCRIPTS:
            check_command([module, *args[2:]])
        elif module.split(".")[0] in {"storage", "service", "workers", "client", "bregman"}:
            source = Path(spec.origin).read_text()
            assert "__main__" in source, f"module {module} has no __main__ block to run"
    elif program == "uvicorn":
        assert "uvicorn" in _declared_requirements()
        app_spec = next(a for a in args if ":" in a and not a.startswith("-"))
        target = _importable_attr(app_spec)
        from fastapi import FastAPI

        if "--factory" in args:
            import tempfile

            from storage.config import Settings

            with tempfile.TemporaryDirectory() as tmp:  # build the app as uvicorn would, off to the side
                target = target(Settings(data_dir=tmp, redis_url="memory://"))
        assert isinstance(target, FastAPI), f"{app_spec} does not give a FastAPI app"
    elif program == "celery":
        assert "celery" in _declared_requirements()
        app_module = args[args.index("-A") + 1]
        from celery import Celery

        app = importlib.import_module(app_module).app
        assert isinstance(app, Celery), f"{app_module}.app is not a Celery app"
        assert args[args.index("-A") + 2] == "worker"
        if "-Q" in args:
            from workers.celery_app import CPU_QUEUE, GPU_QUEUE

            for queue in args[args.index("-Q") + 1].split(","):
                assert queue in (CPU_QUEUE, GPU_QUEUE), f"unknown queue {queue!r}"
    elif program in scripts:
        module, _, func = scripts[program].partition(":")
        assert callable(getattr(importlib.import_module(module), func))
    else:
        pytest.fail(f"command {argv} runs {program!r}, which is neither python -m, uvicorn, celery nor a "
                    f"console script of pyproject.toml")


# ---------------------------------------------------------------------------------- compose
def test_compose_has_the_services_with_health_checks_and_volumes():
    services = COMPOSE["services"]
    assert {"postgres", "redis", "api", "worker", "worker-gpu", "migrate"} <= set(services)
    for name in ("postgres", "redis", "api"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    assert {"pgdata", "redisdata", "artifacts"} <= set(COMPOSE["volumes"])
    for name in BREGKD_SERVICES:
        assert "artifacts:/data" in services[name]["volumes"], f"{name} does not share the artifact volume"
        assert services[name]["environment"]["BREGKD_DATA_DIR"] == "/data"


def test_gpu_worker_reserves_one_gpu_and_runs_one_job():
    gpu = COMPOSE["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["count"] == 1 and "gpu" in devices[0]["capabilities"]
    cmd = gpu["command"]
    assert cmd[cmd.index("--concurrency") + 1] == "1" and cmd[cmd.index("--pool") + 1] == "solo"
    assert cmd[cmd.index("-Q") + 1] == "gpu"


@pytest.mark.parametrize("service", BREGKD_SERVICES)
def test_compose_commands_resolve(service):
    check_command(COMPOSE["services"][service]["command"])


@pytest.mark.parametrize("service", ["api", "worker", "migrate"])
def test_compose_waits_for_its_dependencies(service):
    deps = COMPOSE["services"][service]["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"
    if service != "migrate":
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"


def test_every_bregkd_variable_is_a_settings_field():
    from client.settings import ENV_API_KEY, ENV_API_URL
    from storage.config import Settings

    fields = {f"BREGKD_{name.upper()}" for name in Settings.model_fields} | {ENV_API_URL, ENV_API_KEY}
    text = (ROOT / "docker-compose.yml").read_text() + "\n" + ENV_EXAMPLE + "\n" + DOCKERFILE
    used = set(re.findall(r"\bBREGKD_[A-Z0-9_]+", text))
    assert used, "no BREGKD_* variable found: the parser is broken"
    unknown = sorted(used - fields)
    assert not unknown, f"{unknown} are not fields of storage.config.Settings (or the client's settings)"
    for key, value in _env_example().items():
        if key.startswith("BREGKD_"):
            Settings.model_validate({key.removeprefix("BREGKD_").lower(): value})  # the example value is valid


def test_compose_interpolations_have_defaults_or_examples():
    text = (ROOT / "docker-compose.yml").read_text()
    example = _env_example()
    for name, default in re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(:-[^}]*)?\}", text):
        assert default or name in example, f"${{{name}}} has no default and is missing from .env.example"
    for name in re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text):
        assert name in example, f"{name} is used by docker-compose.yml but not documented in .env.example"


# ---------------------------------------------------------------------------------- Dockerfile
def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    ignored = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")}
    copies = [rest for word, rest in _instructions() if word == "COPY" and not rest.startswith("--from")]
    assert copies
    for rest in copies:
        *sources, _dest = shlex.split(rest)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
            assert src.rstrip("/") not in ignored, f"COPY source {src} is excluded by .dockerignore"
    for must in (".git", ".env", "tests"):
        assert must in ignored


def test_dockerfile_is_multi_stage_with_pinned_torch_and_a_cuda_switch():
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    assert len(froms) >= 2 and any(" AS build" in f for f in froms)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, flags=re.M))
    pinned = next(d for d in PYPROJECT["project"]["optional-dependencies"]["lib"] if d.startswith("torch"))
    assert pinned == f"torch=={args['TORCH_VERSION']}"
    assert args["TORCH_VARIANT"] == "cpu"
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in DOCKERFILE
    installs = [rest for word, rest in _instructions() if word == "RUN" and "pip install" in rest]
    extras = re.search(r'"\.\[([^\]]+)\]"', " ".join(installs)).group(1).split(",")
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])


def test_dockerfile_cmd_resolves():
    cmds = [rest for word, rest in _instructions() if word in ("CMD", "ENTRYPOINT")]
    assert cmds
    for rest in cmds:
        check_command(json.loads(rest))


@pytest.mark.parametrize("argv", [
    ["celery", "-A", "workers.no_such_app", "worker"],
    ["uvicorn", "--factory", "service.app:no_such_factory"],
    ["python", "-m", "storage.no_such_module"],
    ["no-such-program", "--help"],
])
def test_the_command_check_catches_mistakes(argv):
    with pytest.raises((AssertionError, ImportError, AttributeError, pytest.fail.Exception)):
        check_command(argv)
