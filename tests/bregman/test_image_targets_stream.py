"""A distillation's targets of an image layer are streamed: the body runs batch by batch and no
``N x C*H*W`` tensor of pre-activations is ever allocated; only what the student trains on (the
coefficient map, k per position) is kept per example.

How it is observed: the body is wrapped to record the batch of every call, and the torch
profiler (``profile_memory``) records the bytes every aten operator allocates; the largest must
stay below half of one ``N x d`` float tensor during the teacher pass and the fit's row
sampling (the old code's ``torch.cat`` of the pre-activations allocated exactly that). The
coefficient pass is observed through the body's calls only (under the profiler the solver's
many small operators take minutes).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bregman.distillation.cut import resolve_cut
from bregman.distillation.targets import StreamedPreactivations, coefficients, compute_targets
from bregman.layouts import rows_of_map, sample_rows
from bregman.models import build_model
from bregman.pca import BregmanPCA
from tests.bregman._pca_fixtures import single_thread  # noqa: F401  (a fixture)
from tests.bregman._teacher_fixtures import randomize_batch_norm

pytestmark = pytest.mark.usefixtures("single_thread")
N, BATCH = 128, 8


class CountingBody(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body, self.batches = body, []

    def forward(self, x):
        self.batches.append(int(x.shape[0]))
        return self.body(x)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    teacher = randomize_batch_norm(build_model("resnet8", base_width=2)).eval()
    x = torch.randn(N, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cut = resolve_cut(teacher, "layer3.0", x[:2], layout="channels")
    assert cut.map_shape == (8, 4, 4)
    return x, cut


def _largest_allocation(prof) -> int:
    return max(int(e.cpu_memory_usage) for e in prof.events())


def test_targets_fit_rows_and_coefficients_are_streamed_in_batches(setup):
    x, cut = setup
    d = 8 * 4 * 4
    body = CountingBody(cut.body)
    streamed_cut = SimpleNamespace(body=body, head=cut.head, transfer=cut.transfer, map_shape=cut.map_shape)
    whole = N * d * 4  # bytes of the (N, d) float pre-activations
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof0:
        t = compute_targets(x, cut=streamed_cut, batch_size=BATCH)
    assert _largest_allocation(prof0) < whole / 2
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        rows = sample_rows(t.source, cut.map_shape, 300, seed=0)  # the channels fit's rows
    est = BregmanPCA(cut.transfer, n_components=3, max_iter=20, random_state=0).fit(rows.double())
    c = coefficients(t, est, cut.map_shape)  # (not profiled: the solver's many small ops make it slow)
    # still a stream after the fit's rows and the coefficients: two more passes, nothing held
    assert isinstance(t.source, StreamedPreactivations) and t.source.passes == 2
    assert body.batches == [BATCH] * (N // BATCH) * 3  # outputs, fit rows, coefficients: batch by batch
    assert _largest_allocation(prof) < whole / 2
    assert c.shape == (N, 3, 4, 4)  # what is kept per example: k per position

    # the same numbers as from the held pre-activations
    held = compute_targets(x, cut=cut, batch_size=BATCH, hold_preactivations=True)
    with torch.no_grad():
        torch.testing.assert_close(held.source, cut.body(x).flatten(1), rtol=0, atol=0)
    torch.testing.assert_close(t.outputs, held.outputs, rtol=0, atol=0)
    torch.testing.assert_close(rows, sample_rows(held.source, cut.map_shape, 300, seed=0), rtol=0, atol=0)
    ref = torch.as_tensor(est.transform(rows_of_map(held.source, cut.map_shape).double())).float()
    torch.testing.assert_close(c.permute(0, 2, 3, 1).reshape(-1, 3), ref, rtol=1e-5, atol=1e-5)


def test_hint_materializes_the_map_once_and_holds_it(setup):
    x, cut = setup
    body = CountingBody(cut.body)
    channels_cut = SimpleNamespace(body=body, head=cut.head, transfer=cut.transfer, map_shape=cut.map_shape)
    t = compute_targets(x, cut=channels_cut, batch_size=BATCH)
    a = t.preactivations
    assert a.shape == (N, 8 * 4 * 4) and t.preactivations is a  # one more pass, then held
    assert len(body.batches) == 2 * (N // BATCH)
    with torch.no_grad():
        torch.testing.assert_close(a, cut.body(x).flatten(1), rtol=0, atol=0)
    # a flat cut holds its pre-activations from the teacher pass (its fit reads every row)
    flat = compute_targets(x, cut=SimpleNamespace(body=body, head=cut.head, transfer=cut.transfer, map_shape=None))
    assert isinstance(flat.source, torch.Tensor) and flat.source.shape == (N, 8 * 4 * 4)
