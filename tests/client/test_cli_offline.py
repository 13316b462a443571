"""The ``bregkd`` command line against a fake API (httpx.MockTransport): parsing, help screens,
messages in the command line's words, Ctrl-C while waiting. No service is started."""
from __future__ import annotations

import json
import re
from typing import Any, Callable

import httpx
import pytest
from typer.testing import CliRunner

import client.cli as cli
from client.api import BregkdClient
from tests.client import fakes

Handler = Callable[[httpx.Request], httpx.Response]


class FakeApi:
    """Routes → answers; records every request the CLI sent."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, answer: Any, status: int = 200) -> None:
        self.routes[(method, path)] = answer if callable(answer) else (
            lambda request: httpx.Response(status, json=answer))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.routes.get((request.method, request.url.path))
        return handler(request) if handler else httpx.Response(404, json={"detail": "Not Found"})


@pytest.fixture
def api(monkeypatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(cli.State, "client", lambda self: BregkdClient(self.api_url, self.api_key,
                                                                       transport=httpx.MockTransport(fake)))
    return fake


def run(*args: str, key: str | None = "bkd_test", url: str = "http://svc"):
    env = {"BREGKD_API_URL": url, "COLUMNS": "80", "BREGKD_API_KEY": key or ""}
    return CliRunner().invoke(cli.app, list(args), env=env)


JOB = fakes.job("job_91ab02cd", state="failed").model_dump(mode="json")


# ----------------------------------------------------------------------------- --json
@pytest.mark.parametrize("args", [["--json", "jobs", "show", "job_91ab02cd"], ["jobs", "show", "job_91ab02cd", "--json"],
                                  ["jobs", "--json", "show", "job_91ab02cd"]])
def test_json_is_accepted_anywhere(api, args):
    api.on("GET", "/v1/jobs/job_91ab02cd", JOB)
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == "job_91ab02cd"


def test_without_json_a_table_is_printed(api):
    api.on("GET", "/v1/jobs/job_91ab02cd", JOB)
    result = run("jobs", "show", "job_91ab02cd")
    assert result.exit_code == 0 and result.stdout.startswith("job job_91ab02cd  kind=distillation  state=failed")


# ----------------------------------------------------------------------------- help
def _all_commands(group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _all_commands(command, (*prefix, name))


@pytest.mark.parametrize("path", [(), *_all_commands(__import__("typer").main.get_command(cli.app))],
                         ids=lambda p: " ".join(p) or "bregkd")
def test_help_screens_show_no_type_labels_nor_stray_spaces(path):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert not re.search(r"<(bool|str|int|float|path|list\[[^\]]*\])>", text), text
    assert not re.search(r"\w \.(\s|$)", text), text  # "Directory ." where markup ate "[default: ...]"
    assert "  \n" not in text.replace(" " * 3, "")  # no lines ending in stray spaces inside the text


def test_epochs_and_option_keys_are_described():
    text = re.sub(r"\s+", " ", run("distill", "--help").stdout)
    assert re.search(r"--epochs N Training epochs of every method \[default: [^\]]+\]", text)
    keys = re.search(r"-o, --option KEY=VALUE \(repeatable\) Training option; keys: ([a-z_, ]+)\.", text)
    assert keys and {"lr", "temperature", "batch_size", "augment_copies"} <= set(keys.group(1).split(", "))
    assert "[default: ./<job id>]" in run("download", "--help").stdout


# ----------------------------------------------------------------------------- messages
def _error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_unknown_option_key_lists_the_valid_ones(api):
    result = run("distill", "tch_1", "--layer", "2", "-o", "learning_rate=0.01")
    assert result.exit_code == 1
    line = _error(result)
    assert line.startswith("error: invalid distillation job: -o learning_rate: unknown key; valid keys: ")
    assert "lr" in line.split("valid keys: ")[1].split(", ")
    assert "Extra inputs" not in line and not api.requests  # refused before anything was sent


def test_spec_problems_name_the_flags(api):
    line = _error(run("distill", "tch_1"))
    assert line == "error: invalid distillation job: name a --representation or a --layer"
    line = _error(run("distill", "tch_1", "--layer", "2", "--k", "0"))
    assert line.startswith("error: invalid distillation job: --k: ") and "n_components" not in line
    line = _error(run("fit", "tch_1", "--layer", "2", "--k", "3", "--share", "0.9"))
    assert line == "error: invalid representation job: give --k or --share, not both"
    assert "Value error" not in line


def test_the_apis_422_is_put_in_the_flags_words(api):
    api.on("GET", "/v1/datasets/digits", {"id": "digits", "name": "digits", "builtin": True, "status": "ready",
                                          "created_at": fakes.CREATED})
    api.on("POST", "/v1/jobs", {"detail": [
        {"loc": ["body", "n_components"], "msg": "n_components=70 is too large for layer '2' with d=64 units; "
                                                 "choose k between 1 and 63", "type": "value_error"},
        {"loc": ["body", "representation_job_id"], "msg": "Value error, job 'job_x' is a distillation job",
         "type": "value_error"}]}, status=422)
    line = _error(run("distill", "tch_1", "--layer", "2", "--k", "70"))
    assert line == ("error: 422 Unprocessable Entity: --k: --k 70 is too large for layer '2' with d=64 units; "
                    "choose k between 1 and 63; --representation: job 'job_x' is a distillation job")


def test_a_data_sets_name_names_it(api):
    api.on("GET", "/v1/datasets", {"items": [
        {"id": "digits", "name": "digits", "builtin": True, "status": "ready", "created_at": fakes.CREATED},
        {"id": "ds_5e1f", "name": "mine", "status": "ready", "created_at": fakes.CREATED}],
        "total": 2, "limit": 500, "offset": 0})
    api.on("POST", "/v1/jobs", fakes.job("job_new", kind="representation", state="queued").model_dump(mode="json"))
    result = run("fit", "tch_1", "--layer", "2", "--dataset", "mine")
    assert result.exit_code == 0, result.output
    sent = json.loads(api.requests[-1].content)
    assert sent["dataset"] == "ds_5e1f"


def test_a_missing_key_says_where_a_key_goes(api):
    api.on("GET", "/v1/jobs", {"detail": "missing API key: send `Authorization: Bearer <key>`"}, status=401)
    line = _error(run("jobs", "list", key=None))
    assert "BREGKD_API_KEY" in line and "--api-key" in line and "bregkd serve" in line
    line = _error(run("jobs", "list", key="bkd_wrong"))
    assert "BREGKD_API_KEY" in line and "--api-key" in line


@pytest.mark.parametrize("url, sent", [("svc:8000", "http://svc:8000/v1/jobs"),
                                       ("http://svc:8000/v1", "http://svc:8000/v1/jobs"),
                                       ("https://svc/v1/", "https://svc/v1/jobs")])
def test_urls_without_a_scheme_or_with_v1_reach_the_routes(api, url, sent):
    api.on("GET", "/v1/jobs", {"items": [], "total": 0, "limit": 50, "offset": 0})
    result = run("jobs", "list", url=url)
    assert result.exit_code == 0, result.output
    assert str(api.requests[-1].url).split("?")[0] == sent


def test_a_url_of_another_scheme_or_path_is_explained(api):
    line = _error(run("jobs", "list", url="ftp://svc"))
    assert "must start with http:// or https://" in line
    line = _error(run("jobs", "list", url="http://svc/api"))  # the router's 404: not this API's base URL
    assert "no bregkd route GET /v1/jobs at http://svc/api" in line and "BREGKD_API_URL" in line


# ----------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_while_waiting_says_the_job_goes_on(api):
    running = fakes.job("job_91ab02cd", state="running").model_dump(mode="json")
    api.on("GET", "/v1/jobs/job_91ab02cd", running)

    def interrupted(request):
        raise KeyboardInterrupt  # what Ctrl-C raises inside the read of the event stream

    api.on("GET", "/v1/jobs/job_91ab02cd/events", interrupted)
    result = run("jobs", "wait", "job_91ab02cd")
    assert result.exit_code == 130
    line = result.stderr.strip().splitlines()[-1]  # below the progress bar's last state
    assert "job job_91ab02cd goes on" in line and "bregkd jobs cancel job_91ab02cd" in line
    assert not any(r.url.path.endswith("/cancel") for r in api.requests)
