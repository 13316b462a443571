"""The FastAPI application: ``uvicorn --factory service.app:create_app``.

Routes are thin (``service/routes``), wire models live in ``api_schemas``, records and blobs in
``storage``. This process sends messages with the Celery app but never imports torch or a task.
"""
from __future__ import annotations

import logging

import redis
from fastapi import FastAPI

from service.errors import install_error_handlers
from service.limits import install_limits
from service.metrics import install_metrics
from service.routes import artifacts, datasets, health, jobs, teachers
from storage.blobs import BlobStore
from storage.config import Settings, get_settings
from storage.migrate import upgrade
from workers.celery_app import make_celery

logger = logging.getLogger(__name__)

DESCRIPTION = """Compress a trained network: upload a teacher, fit the Bregman representation of one
of its layers, and distill a small student through it. Authenticate with `Authorization: Bearer <key>`
(keys: `python -m service.admin keys create --tenant NAME`)."""


def create_app(settings: Settings | None = None, *, migrate: bool | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.blob_dir.mkdir(parents=True, exist_ok=True)
    # uploads of a crashed API process; other live processes' uploads are locked and kept
    BlobStore(settings.blob_dir).sweep_tmp(settings.tmp_sweep_min_age_s, settings.tmp_sweep_grace_s)
    if settings.migrate_on_start if migrate is None else migrate:
        upgrade(settings.resolved_database_url)
    app = FastAPI(title="bregkd", version=settings.version, description=DESCRIPTION)
    app.state.settings = settings
    app.state.celery = make_celery(settings)
    # None when the broker is not Redis (e.g. memory:// in unit tests): /readyz then reports not ready
    app.state.redis = (
        redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        if settings.redis_url.startswith(("redis://", "rediss://", "unix://"))
        else None
    )
    install_error_handlers(app)
    install_limits(app, settings, upload_paths={teachers.router.prefix, datasets.router.prefix})
    install_metrics(app)  # outermost: counts the limits' answers too
    for module in (health, teachers, datasets, jobs, artifacts):
        app.include_router(module.router)
    return app
