"""The sandbox child (:mod:`workers.sandbox`): memory, time and crashes end the child only, with a
reason the user can read; nothing a client sees holds a traceback or a server path (issue 11,
findings 2 and 5). Faults are injected by ``tests/security/_sandbox_faults.py``, which the child
imports through ``BREGKD_SANDBOX_PRELOAD``."""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from bregman.datasets import load_dataset_file
from workers.sandbox import SandboxFailure, SandboxLimits, client_message, public_error, run_in_sandbox
from tests.security._sandbox_faults import SECRET_PATH

MiB = 1024**2
ROOMY = SandboxLimits(memory_bytes=2048 * MiB, time_s=120)
FORBIDDEN = ("/work/", "site-packages", "Traceback", SECRET_PATH)


@pytest.fixture
def faults(monkeypatch):
    monkeypatch.setenv("BREGKD_SANDBOX_PRELOAD", "tests.security._sandbox_faults")


def _dataset(path, note: str | None = None, rows: int = 40, dtype=np.float32):
    save_file({"x": np.zeros((rows, 1000), dtype=dtype)}, str(path), metadata={"note": note} if note else None)
    return path


def _fail(path, limits=ROOMY) -> SandboxFailure:
    with pytest.raises(SandboxFailure) as err:
        run_in_sandbox("workers.sandbox:inspect_dataset_file", {"path": str(path)}, what="loading the data set",
                       limits=limits)
    message = str(err.value)
    assert "\n" not in message and not any(bad in message for bad in FORBIDDEN), message
    return err.value


@pytest.fixture(scope="module")
def big_legal_file(tmp_path_factory):
    """20,000 x 1000 float16 inputs (40 MB): legal, but loading widens them to float32 and splits them."""
    return _dataset(tmp_path_factory.mktemp("big") / "big.safetensors", rows=20_000, dtype=np.float16)


@pytest.fixture(scope="module")
def small_peak(tmp_path_factory) -> int:
    """Peak memory of a child loading a 160 KB data set: the interpreter, torch and our code."""
    path = _dataset(tmp_path_factory.mktemp("small") / "small.safetensors")
    result = run_in_sandbox("workers.sandbox:inspect_dataset_file", {"path": str(path)}, limits=ROOMY)
    assert result.value["n_train"] == 40 and result.value["input_shape"] == [1000]
    return result.peak_rss_bytes


def test_a_file_that_needs_more_memory_than_the_limit_fails_that_load_only(big_legal_file, small_peak):
    limit = small_peak + 96 * MiB  # loading the big file needs about 200 MB more than the small one
    failure = _fail(big_legal_file, SandboxLimits(memory_bytes=limit, time_s=120))
    assert failure.kind == "memory"
    assert re.fullmatch(rf"loading the data set used more than {limit / MiB:.0f} MiB of memory "
                        r"\(BREGKD_SANDBOX_MEMORY_BYTES\); the file is too large, or built to be", str(failure))
    assert failure.peak_rss_bytes < limit + 64 * MiB
    # the file is legal: without the limit it loads
    assert load_dataset_file(big_legal_file).n_train == 20_000


def test_a_decompression_bomb_ends_in_the_child(tmp_path, small_peak):
    """A 200 KB .npz whose x_train inflates to 200 MB: refused by the archive checks where they
    exist, else stopped by the memory limit; either way only the child paid for it."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x_train=np.zeros((50_000, 1000), np.float32))
    assert path.stat().st_size < 1024 * 1024
    limit = small_peak + 96 * MiB
    failure = _fail(path, SandboxLimits(memory_bytes=limit, time_s=120))
    assert failure.kind in ("memory", "invalid"), failure
    assert failure.peak_rss_bytes < limit + 64 * MiB


def test_a_load_past_the_deadline_is_killed(big_legal_file):
    failure = _fail(big_legal_file, SandboxLimits(memory_bytes=2048 * MiB, time_s=0.5))
    assert failure.kind == "time"
    assert str(failure).startswith("loading the data set took longer than 0.5 s (BREGKD_SANDBOX_TIME_S)")


@pytest.mark.parametrize("action, signal_name", [("kill", "SIGKILL"), ("segv", "SIGSEGV")])
def test_a_child_that_dies_fails_the_load_and_this_process_lives_on(tmp_path, faults, caplog, action, signal_name):
    caplog.set_level(logging.ERROR, logger="workers.sandbox")
    failure = _fail(_dataset(tmp_path / f"{action}.safetensors", f"BREGKD-FAULT:{action}"))
    assert failure.kind == "crash"
    assert f"loading the data set crashed the process that loaded it (signal" in str(failure)
    assert signal_name in str(failure) and failure.error_id in str(failure)
    assert failure.error_id in caplog.text  # the operators find it in the log
    if action == "kill":  # this process is still here, and runs the next load
        assert run_in_sandbox("workers.sandbox:inspect_dataset_file",
                              {"path": str(_dataset(tmp_path / "next.safetensors"))}, limits=ROOMY).value["n_train"] == 40


def test_an_unexpected_error_reaches_the_client_as_an_error_id_only(tmp_path, faults, caplog):
    caplog.set_level(logging.ERROR, logger="workers.sandbox")
    failure = _fail(_dataset(tmp_path / "boom.safetensors", "BREGKD-FAULT:boom"))
    assert failure.kind == "internal"
    assert re.fullmatch(r"internal error err_[0-9a-f]{12} while loading the data set; the operators have the details",
                        str(failure))
    assert failure.error_id in caplog.text and SECRET_PATH in caplog.text and "Traceback" in caplog.text


def test_a_user_error_naming_a_server_path_is_kept_without_the_path(tmp_path, faults):
    failure = _fail(_dataset(tmp_path / "vpath.safetensors", "BREGKD-FAULT:vpath"))
    assert failure.kind == "invalid" and str(failure) == "cannot parse <path>: the weights are damaged"


def test_client_message_and_public_error(caplog):
    assert client_message("teacher file '/srv/var/scratch/links/ab.pt2' does not exist") == \
        "teacher file '<path>' does not exist"
    assert client_message("scale images yourself, e.g. x.astype('float32') / 255") == \
        "scale images yourself, e.g. x.astype('float32') / 255"
    assert client_message("re-save it:\nimport torch\nep = 1") == "re-save it:; import torch; ep = 1"
    assert client_message("lib/python3.11/site-packages/torch/x.py failed") == "<path> failed"
    assert client_message("see https://pytorch.org/docs/export.html") == "see https://pytorch.org/docs/export.html"
    assert client_message('Traceback (most recent call last):\n  File "x.py"') is None
    assert public_error(ValueError("bad weight in /work/main/a/b.py"), "while x") == "bad weight in <path>"
    caplog.set_level(logging.ERROR, logger="workers.sandbox")
    text = public_error(KeyError("/work/secret"), "while inspecting the teacher")
    assert re.fullmatch(r"internal error err_[0-9a-f]{12} while inspecting the teacher; the operators have the details",
                        text)
    assert text.split()[2] in caplog.text and "/work/secret" in caplog.text
