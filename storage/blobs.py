"""The content-addressed blob store: files named by their SHA-256, so equal content is stored once.

Writes stream into a temporary file in the store's own directory (same file system, so the
final move is an atomic rename) while the hash is computed; a write that fails or is abandoned
removes its temporary file. A write in progress holds an exclusive ``flock`` on its temporary
file, so :meth:`BlobStore.sweep_tmp` (run when the API starts) removes only the files of writers
that died (a crash, SIGKILL): a lock dies with its process, also when several API processes
share the directory.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import time
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

logger = logging.getLogger(__name__)

TMP_PREFIX = "upload-"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobTooLarge(ValueError):
    """More bytes arrived than the writer's limit allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload exceeds the limit of {limit} bytes")
        self.limit = limit


class BlobWriter:
    """Accumulates one blob: ``write`` chunks, then the store commits it by hash."""

    def __init__(self, fh: BinaryIO, path: Path, limit: int | None) -> None:
        self._fh = fh
        self.tmp_path = path
        self._hash = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self.sha256: str | None = None

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise BlobTooLarge(self.limit)
        self._hash.update(chunk)
        self._fh.write(chunk)

    def _close(self) -> str:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self.sha256 = self._hash.hexdigest()
        return self.sha256


class BlobStore:
    """A directory of blobs ``<root>/<sha[:2]>/<sha>`` plus ``<root>/tmp`` for writes in progress."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    @contextmanager
    def writer(self, limit: int | None = None) -> Iterator[BlobWriter]:
        """Open a temporary file to stream into; on exit without error it is stored by hash.

        The caller may inspect ``writer.tmp_path`` inside the block (e.g. sniff its format) and
        raise to discard it. On any exception the temporary file is removed.
        """
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=TMP_PREFIX)
        tmp = Path(name)
        # a lock on a descriptor of its own, held until the block ends (also after ``finish``
        # closes the writing one): a sweep leaves the file alone while this process lives
        lock_fd = os.open(tmp, os.O_RDONLY)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # a file system without locks: the sweep falls back to the file's age
        w = BlobWriter(os.fdopen(fd, "wb"), tmp, limit)
        try:
            yield w
            if not w._fh.closed:
                w._close()
            self._commit(tmp, w.sha256)  # type: ignore[arg-type]
        finally:
            try:
                if not w._fh.closed:
                    w._fh.close()  # flushes: raises again on a full disk
            except OSError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
                os.close(lock_fd)

    def sweep_tmp(self, min_age_s: float = 60.0, unlocked_fallback_age_s: float = 3600.0) -> int:
        """Remove temporary files that no live writer holds; returns how many.

        A file younger than ``min_age_s`` is always kept (its writer may not have locked it
        yet). Where the file system has no ``flock``, only files older than
        ``unlocked_fallback_age_s`` are removed.
        """
        removed, now = 0, time.time()
        for path in self.tmp_dir.glob(f"{TMP_PREFIX}*"):
            try:
                age = now - path.stat().st_mtime
                if age < min_age_s:
                    continue
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer holds it
                except OSError as exc:
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL) or age < unlocked_fallback_age_s:
                        continue
                path.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
        if removed:
            logger.info("removed %d abandoned temporary upload(s) from %s", removed, self.tmp_dir)
        return removed

    def finish(self, w: BlobWriter) -> str:
        """Close the writer early (to inspect the complete file) and return its hash."""
        return w._close()

    def _commit(self, tmp: Path, sha256: str) -> None:
        dest = self.path(sha256)
        if dest.exists():  # dedupe: the same content is already stored
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    def put_file(self, src: str | os.PathLike) -> tuple[str, int]:
        """Store a copy of a local file; returns ``(sha256, size)``."""
        with open(src, "rb") as fh, self.writer() as w:
            while chunk := fh.read(1024 * 1024):
                w.write(chunk)
        assert w.sha256 is not None
        return w.sha256, w.size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        with self.writer() as w:
            w.write(data)
        assert w.sha256 is not None
        return w.sha256, w.size

    def delete(self, sha256: str) -> bool:
        """Remove a blob; the caller checks that no record refers to it any more."""
        p = self.path(sha256)
        if p.exists():
            p.unlink()
            return True
        return False

    def copy_to(self, sha256: str, dest: str | os.PathLike) -> Path:
        dest = Path(dest)
        shutil.copyfile(self.path(sha256), dest)
        return dest
