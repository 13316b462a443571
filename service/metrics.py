"""Prometheus metrics: requests (counted by middleware), and, read at scrape time from the
records and Redis, jobs by state, queue lengths and job durations."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from storage.db import session_factory
from storage.jobs import as_utc
from storage.models import Job
from workers.celery_app import CPU_QUEUE, GPU_QUEUE

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, float("inf"))


class _StoreCollector:
    def __init__(self, app) -> None:
        self.app = app

    def collect(self):
        settings = self.app.state.settings
        by_state = GaugeMetricFamily("bregkd_jobs", "Jobs by state and kind", labels=["state", "kind"])
        durations = HistogramMetricFamily("bregkd_job_duration_seconds", "Run time of finished jobs", labels=["kind", "state"])
        with session_factory(settings.resolved_database_url)() as db:
            for state, kind, n in db.execute(select(Job.state, Job.kind, func.count()).group_by(Job.state, Job.kind)):
                by_state.add_metric([state, kind], n)
            per: dict[tuple[str, str], list[float]] = {}
            rows = db.execute(
                select(Job.kind, Job.state, Job.started_at, Job.finished_at).where(
                    Job.finished_at.is_not(None), Job.started_at.is_not(None)
                )
            )
            for kind, state, started, finished in rows:
                per.setdefault((kind, state), []).append((as_utc(finished) - as_utc(started)).total_seconds())
        for (kind, state), values in per.items():
            buckets = [(str(b) if b != float("inf") else "+Inf", sum(1 for v in values if v <= b)) for b in DURATION_BUCKETS]
            durations.add_metric([kind, state], buckets, sum(values))
        yield by_state
        yield durations
        queue = GaugeMetricFamily("bregkd_queue_length", "Messages waiting in a Celery queue", labels=["queue"])
        try:
            for name in (CPU_QUEUE, GPU_QUEUE) if self.app.state.redis is not None else ():
                queue.add_metric([name], self.app.state.redis.llen(name))
        except Exception:
            pass
        yield queue


class ApiMetrics:
    """The API process's own registry (one per app, so tests may build several apps)."""

    def __init__(self, app) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bregkd_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "bregkd_http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=self.registry
        )
        self.registry.register(_StoreCollector(app))


class RequestMetricsMiddleware:
    """Counts requests and their latency by route template (a plain ASGI middleware: cheaper than
    Starlette's BaseHTTPMiddleware and it does not buffer streamed responses)."""

    def __init__(self, app, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)


def install_metrics(app) -> None:
    app.state.metrics = ApiMetrics(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)


def render_metrics(app) -> tuple[bytes, str]:
    return generate_latest(app.state.metrics.registry), CONTENT_TYPE_LATEST
