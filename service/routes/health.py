"""``/healthz`` (alive), ``/readyz`` (Redis and a worker answer), ``/metrics`` (Prometheus)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from api_schemas import Health, Readiness
from service.deps import SettingsDep
from service.metrics import render_metrics
from storage.db import engine_for

router = APIRouter(tags=["health"])

WORKER_KEY_PREFIX = "bregkd:worker:"


def live_workers(redis_client) -> list[str]:
    """Workers whose presence key (refreshed every few seconds, with a TTL) still exists."""
    return sorted(k.decode() if isinstance(k, bytes) else k for k in redis_client.scan_iter(f"{WORKER_KEY_PREFIX}*", count=100))


@router.get("/healthz", response_model=Health)
def healthz(settings: SettingsDep):
    return Health(status="ok", version=settings.version)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request, settings: SettingsDep):
    redis_ok, db_ok, workers, detail = False, False, [], []
    try:
        if request.app.state.redis is None:
            raise RuntimeError("the broker is not Redis")
        request.app.state.redis.ping()
        redis_ok = True
        workers = [w.removeprefix(WORKER_KEY_PREFIX) for w in live_workers(request.app.state.redis)]
    except Exception as exc:
        detail.append(f"redis unreachable: {exc}")
    try:
        with engine_for(settings.resolved_database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        db_ok = True
    except Exception as exc:
        detail.append(f"database unreachable: {exc}")
    if redis_ok and not workers:
        detail.append("no worker has reported in the last seconds")
    ready = redis_ok and db_ok and bool(workers)
    body = Readiness(ready=ready, redis=redis_ok, database=db_ok, workers=workers, detail="; ".join(detail) or None)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request):
    body, content_type = render_metrics(request.app)
    return PlainTextResponse(body, media_type=content_type)
