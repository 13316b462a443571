"""Unit tests of the client's pieces that need no running service."""
from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from client.api import ApiError, BregkdClient, BregkdError, ServiceUnreachable, _parse_sse, error_message
from client.cli import app
from client.demo import DemoError, accuracies_from_metrics, pick_layer
from client.settings import DEFAULT_API_URL, ClientSettings


def _response(status: int, body) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.Response(status, json=body)
    return httpx.Response(status, text=body)


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (404, {"detail": "teacher 'tch_1' not found"}, "teacher 'tch_1' not found"),
        (422, {"detail": [{"loc": ["body", "layer"], "msg": "layer '7' does not exist", "type": "value_error"}]},
         "layer: layer '7' does not exist"),
        (422, {"detail": [{"loc": ["body", "budget", "epochs"], "msg": "must be >= 1", "type": "x"},
                          {"loc": ["query", "limit"], "msg": "too big", "type": "x"}]},
         "budget.epochs: must be >= 1; limit: too big"),
        (500, "Internal Server Error\ntraceback...", "Internal Server Error"),
        (401, {"detail": "missing or invalid API key:\n  send Authorization: Bearer <key>"},
         "missing or invalid API key: send Authorization: Bearer <key>"),
    ],
)
def test_error_message_is_one_line(status, body, expected):
    message = error_message(_response(status, body))
    assert message == expected
    assert "\n" not in message


def test_api_error_carries_status_and_message():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer secret"
        return httpx.Response(404, json={"detail": "job 'job_x' not found"})

    with BregkdClient("http://svc", "secret", transport=httpx.MockTransport(handler)) as api:
        with pytest.raises(ApiError) as info:
            api.get_job("job_x")
    assert info.value.status_code == 404
    assert str(info.value) == "404 Not Found: job 'job_x' not found"


def test_invalid_job_spec_fails_before_any_request():
    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not be called
        raise AssertionError("no request expected")

    with BregkdClient("http://svc", "k", transport=httpx.MockTransport(handler)) as api:
        with pytest.raises(BregkdError, match="representation_job_id or a layer"):
            api.distill("tch_1", dataset="digits")
        with pytest.raises(BregkdError, match="n_components or target_share"):
            api.fit_representation("tch_1", "2", n_components=4, target_share=0.9)


def test_sse_parser_joins_data_lines_and_skips_comments():
    lines = [": keep-alive", "", "event: progress", 'data: {"a":', "data: 1}", "", "event: end", "data: {}", ""]
    assert list(_parse_sse(iter(lines))) == [("progress", '{"a":\n1}'), ("end", "{}")]


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("BREGKD_API_URL", "http://example:9000/")
    monkeypatch.setenv("BREGKD_API_KEY", "k1")
    s = ClientSettings.resolve()
    assert (s.api_url, s.api_key) == ("http://example:9000", "k1")
    s = ClientSettings.resolve("http://other", "k2")
    assert (s.api_url, s.api_key) == ("http://other", "k2")
    monkeypatch.delenv("BREGKD_API_URL")
    monkeypatch.delenv("BREGKD_API_KEY")
    assert ClientSettings.resolve() == ClientSettings(DEFAULT_API_URL, None)


def test_connection_refused_gives_a_hint(unused_port):
    with BregkdClient(f"http://127.0.0.1:{unused_port}", "k") as api:
        with pytest.raises(ServiceUnreachable, match="bregkd serve"):
            api.list_jobs()


def test_cli_connection_refused_is_one_line_exit_3(unused_port):
    result = CliRunner().invoke(app, ["--api-url", f"http://127.0.0.1:{unused_port}", "jobs", "list"])
    assert result.exit_code == 3
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the bregkd API")
    assert "bregkd serve" in lines[0]


def test_cli_bad_option_value_is_a_usage_error():
    result = CliRunner().invoke(app, ["distill", "tch_1", "--layer", "2", "--hidden", "a,b"])
    assert result.exit_code == 2
    assert "comma-separated list of widths" in result.output


def test_accuracies_from_metric_layouts():
    methods = ["bregman", "labels"]
    assert accuracies_from_metrics({"accuracy": {"teacher": 0.9, "student": 0.8, "labels": 0.7}}, methods) == \
        {"teacher": 0.9, "student": 0.8, "labels": 0.7}
    nested = {"methods": {"bregman": {"test_accuracy": 0.85}, "labels": {"test_accuracy": 0.75}},
              "teacher_test_accuracy": 0.95}
    assert accuracies_from_metrics(nested, methods) == {"bregman": 0.85, "labels": 0.75, "teacher": 0.95,
                                                        "student": 0.85}
    flat = {"bregman_accuracy": 0.6}
    assert accuracies_from_metrics(flat, methods) == {"bregman": 0.6, "student": 0.6}


def test_pick_layer_takes_the_last_hidden_layer():
    from api_schemas import LayerOut

    def layer(path, transfer, tappable=True, reason=None):
        return LayerOut(path=path, op="linear", output_shape=[4], d=4, transfer=transfer, tappable=tappable,
                        reason=reason)

    layers = [layer("0", "leaky_relu"), layer("2", "leaky_relu"), layer("4", "identity")]
    assert pick_layer(layers).path == "2"
    assert pick_layer([layer("4", "identity")]).path == "4"  # no hidden layer: the output layer
    assert pick_layer([layer("0", "relu"), layer("2", "gelu", False, "GELU is not monotone")]).path == "0"
    with pytest.raises(DemoError, match="0: GELU is not monotone"):
        pick_layer([layer("0", "gelu", False, "GELU is not monotone")])


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_and_cli_import_no_torch_nor_service_code():
    """The client runs on a laptop without torch: only serve/demo load the rest, inside the command."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, client.api, client.cli, client.demo, client.local; "
            "print(sorted(m for m in ('torch', 'bregman', 'service', 'storage', 'workers', 'celery', "
            "'sqlalchemy', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
