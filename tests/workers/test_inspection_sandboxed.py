"""The inspection tasks run their load in the sandbox child: a teacher or data set that crashes
it, or fails in an unexpected way, is ``failed`` with one clean line and this process (the
worker) lives on. The Celery task functions are called directly (one function under test)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file

from storage.blobs import BlobStore
from storage.config import Settings
from storage.db import session_factory
from storage.migrate import upgrade
from storage.models import Dataset, Teacher, Tenant
from tests.security._sandbox_faults import SECRET_PATH
from workers import tasks
from workers.celery_app import app

MANIFEST = {"arch": "mlp", "args": {"in_features": 8, "hidden": [6], "num_classes": 3}}
FORBIDDEN = ("/work/", "site-packages", "Traceback", SECRET_PATH, "/tmp/")


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("BREGKD_SANDBOX_PRELOAD", "tests.security._sandbox_faults")
    s = Settings(data_dir=tmp_path / "var")
    upgrade(s.resolved_database_url)
    with session_factory(s.resolved_database_url)() as db:
        db.add(Tenant(name="t"))
        db.commit()
    # Celery's conf cannot delete a key monkeypatch added, so set it and put back what was there
    previous = getattr(app.conf, "bregkd_settings", None)
    app.conf.bregkd_settings = s
    yield s
    app.conf.bregkd_settings = previous


def _blob(settings: Settings, path) -> tuple[str, int]:
    store = BlobStore(settings.blob_dir)
    with store.writer() as w:
        w.write(path.read_bytes())
    return w.sha256, path.stat().st_size


def _teacher(settings, tmp_path, note: str | None) -> str:
    from bregman.models import build_model

    torch.manual_seed(0)
    path = tmp_path / "t.safetensors"
    save_file(build_model("mlp", **MANIFEST["args"]).state_dict(), str(path), metadata={"note": note} if note else None)
    sha, size = _blob(settings, path)
    with session_factory(settings.resolved_database_url)() as db:
        db.add(Teacher(id="tch_1", tenant="t", format="safetensors", sha256=sha, size=size, manifest=MANIFEST))
        db.commit()
    return "tch_1"


def _record(settings, model, object_id):
    with session_factory(settings.resolved_database_url)() as db:
        row = db.get(model, object_id)
        db.expunge(row)
        return row


def test_a_clean_teacher_is_inspected_in_the_sandbox(settings, tmp_path):
    assert tasks.inspect_teacher(_teacher(settings, tmp_path, None)) == "ready"
    row = _record(settings, Teacher, "tch_1")
    assert row.parameter_count == 8 * 6 + 6 + 6 * 3 + 3 and row.input_shape == [8]
    assert [layer["path"] for layer in row.layers][:1] == ["0"] and row.error is None


def test_an_unexpected_failure_is_stored_as_an_error_id(settings, tmp_path, caplog):
    assert tasks.inspect_teacher(_teacher(settings, tmp_path, "BREGKD-FAULT:boom")) == "failed"
    row = _record(settings, Teacher, "tch_1")
    assert re.fullmatch(r"internal error (err_[0-9a-f]{12}) while loading the teacher; the operators have the details",
                        row.error), row.error
    assert not any(bad in row.error for bad in FORBIDDEN)
    assert row.error.split()[2] in caplog.text and SECRET_PATH in caplog.text
    assert row.inspect_attempts == 1


def test_a_data_set_that_kills_its_sandbox_fails_alone(settings, tmp_path):
    path = tmp_path / "d.safetensors"
    np_save_file({"x": np.zeros((20, 4), np.float32)}, str(path), metadata={"note": "BREGKD-FAULT:kill"})
    sha, size = _blob(settings, path)
    with session_factory(settings.resolved_database_url)() as db:
        db.add(Dataset(id="ds_1", tenant="t", name="d", format="safetensors", sha256=sha, size=size))
        db.commit()
    assert tasks.inspect_dataset("ds_1") == "failed"
    row = _record(settings, Dataset, "ds_1")
    assert row.error.startswith("loading the data set crashed the process that loaded it (signal 9 (SIGKILL), err_")
    assert not any(bad in row.error for bad in FORBIDDEN) and row.inspect_attempts == 1


def test_a_job_loads_a_file_in_process_only_after_a_sandbox_child_has(settings, tmp_path, monkeypatch):
    from workers import loading, sandbox

    _teacher(settings, tmp_path, "BREGKD-FAULT:kill")
    record = _record(settings, Teacher, "tch_1")
    with pytest.raises(sandbox.SandboxFailure, match="crashed the process that loaded it"):
        loading.load_teacher_record(settings, record)
    assert not any(key[1] == record.sha256 for key in loading._VETTED)

    clean = tmp_path / "clean"
    clean.mkdir()
    with session_factory(settings.resolved_database_url)() as db:
        db.delete(db.get(Teacher, "tch_1"))
        db.commit()
    _teacher(settings, clean, None)
    record = _record(settings, Teacher, "tch_1")
    teacher = loading.load_teacher_record(settings, record)
    assert teacher.input_shape == (8,)
    # vetted once per worker process: the next job loads it without another child
    monkeypatch.setattr(sandbox, "run_in_sandbox", lambda *a, **k: pytest.fail("vetted twice"))
    assert loading.load_teacher_record(settings, record).parameter_count == teacher.parameter_count
