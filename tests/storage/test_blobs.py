"""The content-addressed blob store: dedupe, hashing, limits, clean-up of failed writes."""
from __future__ import annotations

import hashlib

import pytest

from storage.blobs import BlobStore, BlobTooLarge


def test_same_content_is_stored_once(tmp_path):
    store = BlobStore(tmp_path)
    sha1, size1 = store.put_bytes(b"hello world")
    sha2, size2 = store.put_bytes(b"hello world")
    assert sha1 == sha2 == hashlib.sha256(b"hello world").hexdigest()
    assert size1 == size2 == 11
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [store.path(sha1)]
    assert store.path(sha1).read_bytes() == b"hello world"


def test_streamed_chunks_hash_like_the_whole(tmp_path):
    store = BlobStore(tmp_path)
    data = bytes(range(256)) * 5000
    with store.writer() as w:
        for i in range(0, len(data), 4096):
            w.write(data[i:i + 4096])
    assert w.sha256 == hashlib.sha256(data).hexdigest() and w.size == len(data)
    assert store.exists(w.sha256)


def test_failed_write_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.writer() as w:
            w.write(b"partial")
            raise RuntimeError("client went away")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_limit_is_enforced_while_streaming(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(BlobTooLarge, match="limit of 10 bytes"):
        with store.writer(limit=10) as w:
            w.write(b"123456")
            w.write(b"789012")
    assert not any(store.tmp_dir.iterdir())


def test_rejecting_after_inspection_discards(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(ValueError):
        with store.writer() as w:
            w.write(b"not what we want")
            sha = store.finish(w)
            assert w.tmp_path.read_bytes() == b"not what we want"
            raise ValueError(sha)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_delete_and_bad_names(tmp_path):
    store = BlobStore(tmp_path)
    sha, _ = store.put_bytes(b"x")
    assert store.delete(sha) and not store.exists(sha) and not store.delete(sha)
    with pytest.raises(ValueError, match="sha256"):
        store.path("../../etc/passwd")
