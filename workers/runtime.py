"""What a running job needs around the library call: a heartbeat, progress reports with an
estimate of time left, cancellation and the time budget.

:class:`JobRun` owns one attempt of one job. Its :meth:`progress` is the library's
``progress(phase, fraction, metrics)`` callback: it writes the job record (throttled), and
raises :class:`JobCancelled` when a cancel was requested or :class:`BudgetExceeded` when the
job's time limit passed, which aborts the library call between two steps. A heartbeat thread
writes ``heartbeat_at`` every few seconds while the attempt lives, so the recovery sweep can
tell a slow job from a dead worker.
"""
from __future__ import annotations

import ctypes
import logging
import math
import os
import socket
import threading
import time
from typing import Any

from storage import jobs as jobstate
from storage.config import Settings
from storage.db import session_factory

logger = logging.getLogger(__name__)


#: seconds a due cancel (or spent budget) waits for the progress callback before the job's thread
#: is interrupted asynchronously
INTERRUPT_GRACE_S = 5.0


class JobCancelled(Exception):
    """Raised inside the progress callback: the user cancelled the job."""


class BudgetExceeded(Exception):
    """Raised inside the progress callback: the job ran past its time budget."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (
            "the job ran past its time budget; raise budget.time_limit_s or make the job smaller "
            "(fewer epochs, budget.max_train_rows, a smaller k)"))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            f = float(v)
            out[str(k)] = f if math.isfinite(f) else None
        elif isinstance(v, (str, bool)) or v is None:
            out[str(k)] = v
        elif hasattr(v, "item"):
            try:
                out[str(k)] = float(v.item())
            except (TypeError, ValueError):
                pass
    return out


def estimate_eta(elapsed: float, overall: float, phase_elapsed: float, phase_from: float,
                 phase_to: float | None) -> float | None:
    """Seconds left: the rest of the current phase at that phase's own rate so far, then the
    phases after it at the job's average rate.

    Phases run at very different rates (a capture, a fit, epochs), so extrapolating the job's
    average alone is wrong by the ratio of the rates; within one phase the rate is steady (a
    teacher pass over batches, epochs of the same size). ``phase_from`` / ``phase_to`` are the
    overall fractions where the current phase starts and ends (``phase_to`` None: unknown).
    """
    if overall <= 0.01 or elapsed <= 0:
        return None
    average = elapsed / overall  # seconds per unit of overall fraction
    if phase_to is None or phase_to <= phase_from:
        return average * (1.0 - overall)
    done = overall - phase_from
    rate = phase_elapsed / done if done > 0.05 * (phase_to - phase_from) and phase_elapsed > 0.2 else average
    return max(0.0, phase_to - overall) * rate + max(0.0, 1.0 - phase_to) * average


class JobRun:
    """One attempt of a job; use as a context manager around the work.

    Parameters
    ----------
    settings : the worker's settings (heartbeat and cancel-poll intervals).
    job_id, attempt : the job and the attempt number this worker claimed.
    time_limit_s : the job's budget; past it :meth:`progress` raises :class:`BudgetExceeded`.
    phases : optional ``{phase: weight}``; the reported fraction is the weighted overall one.
    """

    def __init__(self, settings: Settings, job_id: str, attempt: int, time_limit_s: float,
                 phases: dict[str, float] | None = None) -> None:
        self.settings = settings
        self.job_id = job_id
        self.attempt = attempt
        self.time_limit_s = time_limit_s
        self.factory = session_factory(settings.resolved_database_url)
        self.started = time.monotonic()
        self.metrics: dict[str, Any] = {}
        self._phases = phases or {}
        self._phase_offsets = self._offsets(self._phases)
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._stop = threading.Event()
        self._hb: threading.Thread | None = None
        self._owner: int | None = None  # thread id of the thread running the job
        self._flagged_at: float | None = None
        self._interrupted = False
        self.cancelled = False

    def set_phases(self, phases: dict[str, float]) -> None:
        """Weights of the job's phases in the overall fraction, e.g. ``{"fit": 0.6, ...}``."""
        self._phases = dict(phases)
        self._phase_offsets = self._offsets(self._phases)

    @staticmethod
    def _offsets(phases: dict[str, float]) -> dict[str, tuple[float, float]]:
        total = sum(phases.values()) or 1.0
        out, acc = {}, 0.0
        for name, w in phases.items():
            out[name] = (acc / total, w / total)
            acc += w
        return out

    # -- heartbeat ---------------------------------------------------------------------------
    def __enter__(self) -> "JobRun":
        self._owner = threading.get_ident()
        self._hb = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{self.job_id}", daemon=True)
        self._hb.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._hb is not None:
            self._hb.join(timeout=5)
        if self._interrupted and self._owner is not None:
            # an interrupt not yet delivered must not fire later in unrelated code
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._owner), None)

    def _heartbeat_loop(self) -> None:
        interval = min(self.settings.heartbeat_interval_s, 1.0)
        last_beat = 0.0
        while not self._stop.wait(interval):
            now = time.monotonic()
            if now - last_beat >= self.settings.heartbeat_interval_s:
                last_beat = now
                try:
                    with self.factory() as db:
                        alive = jobstate.heartbeat(db, self.job_id, self.attempt)
                        if alive and jobstate.cancel_requested(db, self.job_id, self.attempt):
                            self.cancelled = True
                except Exception as exc:  # a database hiccup must not kill the job
                    logger.warning("heartbeat of %s failed: %s", self.job_id, exc)
            self._maybe_interrupt(now)

    def _maybe_interrupt(self, now: float) -> None:
        """Stop a job whose library call has not reached a progress check for a while.

        The progress callback is the normal way out. When a cancel or the budget has been due
        for ``INTERRUPT_GRACE_S`` without the callback running (one long step), the exception is
        raised asynchronously in the job's thread; it takes effect at its next Python bytecode.
        """
        overdue = self.cancelled or (now - self.started > self.time_limit_s)
        if not overdue or self._interrupted or self._owner is None:
            self._flagged_at = None if not overdue else self._flagged_at
            return
        if self._flagged_at is None:
            self._flagged_at = now
            return
        if now - self._flagged_at >= INTERRUPT_GRACE_S:
            exc = JobCancelled if self.cancelled else BudgetExceeded
            logger.warning("job %s: no progress check for %.0f s; interrupting its thread", self.job_id, INTERRUPT_GRACE_S)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._owner), ctypes.py_object(exc))
            self._interrupted = True

    # -- progress ----------------------------------------------------------------------------
    def overall(self, phase: str, fraction: float) -> float:
        base = phase.split(":", 1)[0]
        if base in self._phase_offsets:
            start, width = self._phase_offsets[base]
            return start + width * max(0.0, min(1.0, fraction))
        return max(0.0, min(1.0, fraction))

    def check(self) -> None:
        """Raise if the job was cancelled or ran out of time (cheap; polls the record at most every
        ``cancel_poll_s``)."""
        elapsed = time.monotonic() - self.started
        if elapsed > self.time_limit_s:
            raise BudgetExceeded(
                f"the job ran past its time budget of {self.time_limit_s:g} s; raise budget.time_limit_s "
                "or make the job smaller (fewer epochs, budget.max_train_rows, a smaller k)"
            )
        if self.cancelled:
            raise JobCancelled()
        now = time.monotonic()
        if now - self._last_cancel_check >= self.settings.cancel_poll_s:
            self._last_cancel_check = now
            with self.factory() as db:
                if jobstate.cancel_requested(db, self.job_id, self.attempt):
                    self.cancelled = True
                    raise JobCancelled()

    def progress(self, phase: str, fraction: float, metrics: dict[str, Any] | None = None,
                 span: tuple[float, float] | None = None) -> None:
        """The library's progress callback.

        ``span``: the overall fractions where this phase starts and ends, when ``fraction`` is
        already overall (jobs without fixed phase weights); it lets the time left follow the
        phase's own rate (:func:`estimate_eta`).
        """
        if metrics:
            self.metrics.update(_jsonable(metrics))
        overall = self.overall(phase, fraction)
        now = time.monotonic()
        new_phase = phase != getattr(self, "_last_phase", None)
        if new_phase:
            self._last_phase = phase
            base = phase.split(":", 1)[0]
            if span is not None:
                self._phase_span = (float(span[0]), float(span[1]))
            elif base in self._phase_offsets:
                start, width = self._phase_offsets[base]
                self._phase_span = (start, start + width)
            else:
                self._phase_span = (overall, None)
            self._phase_t0 = now
            logger.info("job %s: phase %s at %.2f s", self.job_id, phase, now - self.started)
        if new_phase or now - self._last_write >= 0.5 or fraction >= 1.0:
            self._last_write = now
            elapsed = now - self.started
            eta = estimate_eta(elapsed, overall, now - self._phase_t0, *self._phase_span)
            with self.factory() as db:
                if jobstate.report_progress(db, self.job_id, self.attempt, fraction=overall, phase=phase,
                                            eta_s=eta, metrics=dict(self.metrics)):
                    self.cancelled = True
        self.check()
