"""An in-process app for the fast service tests: SQLite in a temp dir, Celery's in-memory broker
(messages are sent but no worker runs), records inserted directly where a worker would write."""
from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import create_key
from storage.config import Settings
from storage.db import session_scope
from storage.models import Teacher

LAYERS = [
    {"path": "0", "op": "linear", "output_shape": [32], "d": 32, "transfer": "leaky_relu",
     "transfer_params": {"negative_slope": 0.01}, "tappable": True, "reason": None, "representation": "flat"},
    {"path": "2", "op": "linear", "output_shape": [16], "d": 16, "transfer": "gelu", "transfer_params": {},
     "tappable": False, "reason": "it is followed by GELU, which is not monotone; tap layer 0 or 4",
     "representation": "flat"},
    {"path": "4", "op": "linear", "output_shape": [10], "d": 10, "transfer": "identity", "transfer_params": {},
     "tappable": True, "reason": None, "representation": "flat"},
]


def make_client(tmp_path: Path, **overrides) -> tuple[TestClient, Settings]:
    settings = Settings(**{"data_dir": tmp_path, "redis_url": "memory://", **overrides})
    return TestClient(create_app(settings)), settings


def key_for(settings: Settings, tenant: str) -> dict[str, str]:
    with session_scope(settings.resolved_database_url) as db:
        return {"Authorization": f"Bearer {create_key(db, tenant).key}"}


def ready_teacher(settings: Settings, tenant: str, teacher_id: str = "tch_ready") -> str:
    """A teacher record as a worker leaves it after inspection."""
    with session_scope(settings.resolved_database_url) as db:
        db.add(Teacher(id=teacher_id, tenant=tenant, name="mlp", format="pt2", sha256="ab" * 32, size=10,
                       status="ready", parameter_count=100, input_shape=[64], layers=LAYERS))
    return teacher_id
