"""Capturing pre-activations over a data set: one pass vs chunks spilled to disk."""
from __future__ import annotations

import pytest
import torch

from bregman.capture import ChunkedActivations, capture_preactivations
from bregman.layers import split_at
from bregman.models import build_model
from bregman.pca import BregmanPCA
from tests.bregman._teacher_fixtures import one_thread, randomize_batch_norm  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def conv_body():
    torch.manual_seed(0)
    model = randomize_batch_norm(build_model("cnn", in_channels=1, channels=[2, 3], hidden=4, batch_norm=True))
    return split_at(model, "1", torch.randn(2, 1, 8, 8)).body  # BN output of a conv map: d = 128


def test_chunked_capture_of_20_chunks_equals_one_pass(conv_body, tmp_path):
    chunk_rows = 8
    x = torch.randn(20 * chunk_rows, 1, 8, 8)
    whole = capture_preactivations(conv_body, x, batch_size=64)
    assert whole.shape == (160, 128)
    chunks = capture_preactivations(conv_body, x, batch_size=5, chunk_rows=chunk_rows, spill_dir=tmp_path / "acts")
    assert isinstance(chunks, ChunkedActivations)
    assert (chunks.n_rows, chunks.d, len(chunks)) == (160, 128, 20)
    assert len(list((tmp_path / "acts").glob("chunk_*.safetensors"))) == 20
    pieces = list(chunks)
    assert all(p.shape == (chunk_rows, 128) for p in pieces)
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=1e-6, atol=1e-6)
    # re-iterable: a second pass reads the same rows again
    torch.testing.assert_close(chunks.to_tensor(), whole, rtol=1e-6, atol=1e-6)
    # and reopenable from its index by another process
    reopened = ChunkedActivations.open(tmp_path / "acts")
    assert reopened.shape == (160, 128)
    torch.testing.assert_close(reopened.to_tensor(), whole, rtol=1e-6, atol=1e-6)


def test_last_chunk_holds_the_remainder_and_batches_may_come_from_an_iterable(conv_body):
    x = torch.randn(23, 1, 8, 8)
    batches = (x[i : i + 4] for i in range(0, 23, 4))
    chunks = capture_preactivations(conv_body, batches, chunk_rows=10)
    assert [c.shape[0] for c in chunks] == [10, 10, 3]
    torch.testing.assert_close(chunks.to_tensor(), capture_preactivations(conv_body, x, batch_size=23))


def test_temporary_chunks_are_deleted(conv_body):
    chunks = capture_preactivations(conv_body, torch.randn(6, 1, 8, 8), chunk_rows=4)
    directory = chunks.directory
    assert directory.is_dir()
    chunks.cleanup()
    assert not directory.exists()


def test_numpy_inputs_and_progress(conv_body):
    seen = []
    out = capture_preactivations(conv_body, torch.randn(7, 1, 8, 8).numpy(), batch_size=3, progress=lambda done, n: seen.append((done, n)))
    assert out.shape == (7, 128)
    assert seen == [(3, 7), (6, 7), (7, 7)]


def test_bad_arguments_are_refused(conv_body):
    with pytest.raises(ValueError, match="batch_size"):
        capture_preactivations(conv_body, torch.randn(2, 1, 8, 8), batch_size=0)
    with pytest.raises(ValueError, match="chunk_rows"):
        capture_preactivations(conv_body, torch.randn(2, 1, 8, 8), chunk_rows=0)
    with pytest.raises(TypeError, match="iterable"):
        capture_preactivations(conv_body, 3.0)


def test_bregman_pca_fits_chunks_like_the_whole_matrix(conv_body):
    x = torch.randn(60, 1, 8, 8)
    whole = capture_preactivations(conv_body, x)
    chunks = capture_preactivations(conv_body, x, chunk_rows=6)
    a = BregmanPCA(transfer="identity", n_components=3).fit(whole)
    b = BregmanPCA(transfer="identity", n_components=3).fit(chunks)
    torch.testing.assert_close(torch.as_tensor(b.mean_), torch.as_tensor(a.mean_), rtol=1e-4, atol=1e-4)
    assert abs(float(b.divergence_) - float(a.divergence_)) <= 1e-3 * max(1.0, abs(float(a.divergence_)))


def test_uint8_batches_are_scaled_one_batch_at_a_time(conv_body):
    x8 = torch.randint(0, 256, (9, 1, 8, 8), dtype=torch.uint8)
    out = capture_preactivations(conv_body, x8, batch_size=4, scale=1 / 255)
    torch.testing.assert_close(out, capture_preactivations(conv_body, x8.float() * (1 / 255), batch_size=9))
    with pytest.raises(ValueError, match="scale"):
        capture_preactivations(conv_body, x8)


def test_channels_capture_needs_the_map_shape(conv_body):
    from bregman.layouts import LayoutError

    with pytest.raises(LayoutError, match="map_shape"):
        capture_preactivations(conv_body, torch.randn(2, 1, 8, 8), layout="channels")
    rows = capture_preactivations(conv_body, torch.randn(3, 1, 8, 8), layout="channels", map_shape=(2, 8, 8))
    assert rows.shape == (3 * 64, 2)
