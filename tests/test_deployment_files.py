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

BREGKD_SERVICES = ["migrate", "api", "worker", "worker-gpu"]  # every container that runs our image
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


def test_compose_file_follows_the_compose_specification():
    """The Compose Specification's JSON schema, as vendored by check-jsonschema (its copy of
    compose-spec/compose-spec's schema/compose-spec.json): what Compose 2.x itself validates."""
    import importlib.resources

    import jsonschema

    schema_file = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(COMPOSE, schema)
    broken = {**COMPOSE, "services": {**COMPOSE["services"], "api": {**COMPOSE["services"]["api"], "restart": 3}}}
    with pytest.raises(jsonschema.ValidationError):  # the schema really checks something
        jsonschema.validate(broken, schema)


def test_gpu_worker_reserves_one_named_gpu_and_runs_one_job():
    gpu = COMPOSE["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # count and device_ids exclude each other; a named device lets each GPU worker take its own
    assert "count" not in devices[0] and devices[0]["device_ids"] == ["${GPU_DEVICE_ID:-0}"]
    assert gpu["image"] == "bregkd:${GPU_TORCH_VARIANT:-cu128}"
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "${GPU_TORCH_VARIANT:-cu128}"  # the tag names the build
    cmd = gpu["command"]
    assert cmd[cmd.index("--concurrency") + 1] == "1" and cmd[cmd.index("--pool") + 1] == "solo"
    assert cmd[cmd.index("-Q") + 1] == "gpu"


@pytest.mark.parametrize("service", BREGKD_SERVICES)
def test_compose_commands_resolve(service):
    check_command(COMPOSE["services"][service]["command"])


def test_image_tag_follows_the_torch_build():
    for name in ("api", "worker", "migrate"):
        svc = COMPOSE["services"][name]
        assert svc["image"] == "bregkd:${TORCH_VARIANT:-cpu}" and svc["build"]["args"]["TORCH_VARIANT"] == "${TORCH_VARIANT:-cpu}"


def test_api_runs_one_process_without_migrations_and_trusts_only_its_proxy():
    api = COMPOSE["services"]["api"]
    cmd = api["command"]
    assert "--workers" not in cmd  # one Prometheus registry: /metrics is the same at every scrape
    assert api["environment"]["BREGKD_MIGRATE_ON_START"] == "false"  # the migrate service does it
    assert "--proxy-headers" in cmd and cmd[cmd.index("--forwarded-allow-ips") + 1] == "${FORWARDED_ALLOW_IPS:-127.0.0.1}"
    from storage.config import Settings

    assert Settings.model_validate({"migrate_on_start": api["environment"]["BREGKD_MIGRATE_ON_START"]}).migrate_on_start is False


def test_redis_and_postgres_are_reachable_and_redis_has_a_password():
    services = COMPOSE["services"]
    for name, port in (("postgres", 5432), ("redis", 6379)):
        published = services[name]["ports"]
        assert any(p.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:") and p.endswith(f":{port}") for p in published), published
    cmd = services["redis"]["command"]
    assert cmd[cmd.index("--requirepass") + 1] == "${REDIS_PASSWORD:-change-me-too}"
    for name in BREGKD_SERVICES:
        env = services[name]["environment"]
        assert env["BREGKD_REDIS_PASSWORD"] == "${REDIS_PASSWORD:-change-me-too}"
        assert env["BREGKD_DATABASE_PASSWORD"] == "${POSTGRES_PASSWORD:-change-me}"
        assert "PASSWORD" not in env["BREGKD_DATABASE_URL"] and "PASSWORD" not in env["BREGKD_REDIS_URL"]


def test_passwords_with_url_characters_survive_into_the_urls():
    import redis
    from sqlalchemy.engine import make_url

    from storage.config import Settings

    password = "p@ss:w/rd#%?&="
    s = Settings(database_url="postgresql+psycopg://bregkd@postgres:5432/bregkd", database_password=password,
                 redis_url="redis://redis:6379/0", redis_password=password)
    url = make_url(s.database_url)
    assert (url.password, url.host, url.database) == (password, "postgres", "bregkd")
    parsed = redis.connection.parse_url(s.redis_url)
    assert (parsed["password"], parsed["host"], parsed["port"]) == (password, "redis", 6379)
    assert password not in repr(s)


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


def _dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per line, with Docker's semantics: Go filepath.Match patterns relative to
    the context root, ``**`` for any number of directories, ``!`` re-including, last match wins."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context (a directory takes its contents)."""
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        excluded = None
        for negated, regex in _dockerignore_rules():
            if regex.match(prefix):
                excluded = not negated
        if excluded:
            return True
    return False


def test_dockerignore_matcher_follows_docker_semantics():
    assert dockerignored("tests/e2e/conftest.py") and dockerignored(".git/HEAD")
    assert dockerignored("bregman/__pycache__/pca.cpython-311.pyc") and dockerignored("benchmarks/out/x.json")
    assert dockerignored(".env") and not dockerignored(".env.example")  # "!" re-includes
    assert not dockerignored("bregman/pca.py") and not dockerignored("pyproject.toml")


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    copies = [rest for word, rest in _instructions() if word == "COPY" and not rest.startswith("--from")]
    assert copies
    for rest in copies:
        *sources, _dest = shlex.split(rest)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
            assert not dockerignored(src), f"COPY source {src} is excluded by .dockerignore"
            if (ROOT / src).is_dir():  # and none of the package's own files inside it
                for f in (ROOT / src).rglob("*.py"):
                    rel = f.relative_to(ROOT).as_posix()
                    assert "__pycache__" in rel or not dockerignored(rel), f"{rel} is excluded by .dockerignore"
    for secret_or_bulk in (".git/config", ".env", "tests/conftest.py", ".venv/bin/python", "var/bregkd.db"):
        assert dockerignored(secret_or_bulk), f"{secret_or_bulk} would be sent to the image"


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


def _contains_run(argv: list[str], run: tuple[str, ...]) -> bool:
    return any(tuple(argv[i:i + len(run)]) == run for i in range(len(argv) - len(run) + 1))


def test_deployed_api_runs_the_timed_protocol_like_the_embedded_stack():
    """Header and body timeouts live in the uvicorn protocol class: a deployment without the flags
    would hold stalled connections forever (the stack's own tests run with them)."""
    from service.stack import UVICORN_LIMIT_FLAGS

    cmd = [json.loads(rest) for word, rest in _instructions() if word == "CMD"][-1]
    assert _contains_run(cmd, UVICORN_LIMIT_FLAGS), cmd
    assert _contains_run(COMPOSE["services"]["api"]["command"], UVICORN_LIMIT_FLAGS)
    protocol = _importable_attr(UVICORN_LIMIT_FLAGS[1])
    from uvicorn.protocols.http.h11_impl import H11Protocol

    assert issubclass(protocol, H11Protocol)
