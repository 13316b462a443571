"""The channels layout of conv maps: rows, fit, the 1x1 exported layer, the cut, map students."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from bregman.capture import capture_preactivations
from bregman.distillation.api import distill, load_student
from bregman.distillation.cut import resolve_cut
from bregman.distillation.image_augment import crop_flip, image_views
from bregman.distillation.students import StudentSpecError, build_student
from bregman.exported import ExportedLayer
from bregman.layouts import LayoutError, map_of_rows, rows_of_map, sample_rows
from bregman.models import build_model
from bregman.pca import BregmanPCA
from tests.bregman._pca_fixtures import single_thread  # noqa: F401  (a fixture)
from tests.bregman._teacher_fixtures import randomize_batch_norm

pytestmark = pytest.mark.usefixtures("single_thread")
IMAGE = (3, 16, 16)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return randomize_batch_norm(build_model("resnet8", base_width=2)).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(24, *IMAGE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def cut(teacher, x):
    c = resolve_cut(teacher, "layer3.0", x[:2], layout="channels")
    assert c.layout == "channels" and c.map_shape == (8, 4, 4) and c.d == 8
    return c


@pytest.fixture(scope="module")
def fitted(cut, x):
    rows = capture_preactivations(cut.body, x, batch_size=7, layout="channels", map_shape=cut.map_shape).double()
    est = BregmanPCA(cut.transfer, n_components=3, max_iter=30, random_state=0).fit(rows)
    return est, rows


def test_channel_rows_are_the_maps_positions(cut, x):
    # the reference: the body's map read channel-last, one row per (example, position)
    with torch.no_grad():
        ref = cut.body(x).reshape(len(x), *cut.map_shape).permute(0, 2, 3, 1).reshape(-1, 8)
    rows = capture_preactivations(cut.body, x, batch_size=5, layout="channels", map_shape=cut.map_shape)
    assert rows.shape == (24 * 16, 8)
    torch.testing.assert_close(rows, ref, rtol=0, atol=0)
    chunks = capture_preactivations(cut.body, x, batch_size=5, chunk_rows=50, layout="channels", map_shape=cut.map_shape)
    torch.testing.assert_close(chunks.to_tensor(), ref, rtol=0, atol=0)
    torch.testing.assert_close(map_of_rows(rows, (4, 4)).flatten(1), cut.body(x).detach(), rtol=0, atol=0)


def test_channel_fit_equals_a_flat_fit_of_the_reshaped_rows(cut, x, fitted):
    est, _ = fitted
    with torch.no_grad():
        flat = cut.body(x)  # (N, C*H*W): what the flat layout fits, reshaped by hand
    reshaped = flat.reshape(len(x), 8, 16).transpose(1, 2).reshape(-1, 8).double()
    ref = BregmanPCA(cut.transfer, n_components=3, max_iter=30, random_state=0).fit(reshaped)
    torch.testing.assert_close(est.mean_, ref.mean_, rtol=0, atol=0)
    torch.testing.assert_close(est.components_, ref.components_, rtol=0, atol=0)
    assert est.divergence_ == ref.divergence_


def test_exported_1x1_layer_reproduces_reconstruct_and_a_conv2d(fitted, tmp_path):
    est, rows = fitted
    layer = est.export_layer().with_layout("channels", (4, 4))
    coeffs = est.transform(rows)
    cmap = map_of_rows(coeffs, (4, 4))  # (N, k, H, W)
    out = layer(cmap)
    assert out.shape == (24, 8, 4, 4)
    torch.testing.assert_close(rows_of_map(out, (8, 4, 4)), est.reconstruct(coeffs), rtol=0, atol=0)
    # an independent reference: the same layer as a real 1x1 convolution, then the transfer
    weight = layer.components.T.reshape(8, 3, 1, 1)
    torch.testing.assert_close(out, layer.transfer.f(F.conv2d(cmap, weight, layer.mean)), rtol=1e-12, atol=1e-12)
    # the teacher's coefficient map reproduces the fit's divergence (a mean over positions)
    div = layer.transfer.divergence(rows_of_map(layer.preactivation(cmap), (8, 4, 4)), rows).mean()
    assert float(div) == pytest.approx(est.divergence_, rel=1e-9)

    layer.save(tmp_path / "layer")
    loaded = ExportedLayer.load(tmp_path / "layer")
    assert loaded.layout == "channels" and loaded.spatial_shape == (4, 4) and loaded.manifest["spatial_shape"] == [4, 4]
    torch.testing.assert_close(loaded(cmap), out, rtol=0, atol=0)
    ep = torch.export.export(loaded.float(), (cmap[:2].float(),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(ep, str(tmp_path / "layer.pt2"))
    program = torch.export.load(str(tmp_path / "layer.pt2")).module()
    torch.testing.assert_close(program(cmap[:7].float()), out[:7].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(program(cmap[:1].float()), out[:1].float(), rtol=1e-5, atol=1e-5)


def test_head_of_the_tap_is_the_teacher_through_a_channel_cut(teacher, cut, x, fitted):
    with torch.no_grad():
        rows = capture_preactivations(cut.body, x, layout="channels", map_shape=cut.map_shape)
        fmap = cut.transfer.f(map_of_rows(rows, (4, 4)))  # f at every position of the (N, C, H, W) map
        torch.testing.assert_close(cut.head(fmap.flatten(1)), teacher(x), rtol=1e-5, atol=1e-5)
        # and through the imported 1x1 layer with the teacher's own coefficients at every position
        est, rows64 = fitted
        layer = est.export_layer().with_layout("channels", (4, 4))
        out = cut.head(layer(map_of_rows(est.transform(rows64), (4, 4))).flatten(1).float())
    assert out.shape == teacher(x).shape and torch.isfinite(out).all()


def test_fit_rows_subsample_is_seeded_and_a_subset(cut, x):
    with torch.no_grad():
        flat = cut.body(x)
    every = rows_of_map(flat, cut.map_shape)
    some = sample_rows(flat, cut.map_shape, 50, seed=3)
    assert some.shape == (50, 8)
    assert torch.equal(some, sample_rows([flat[:10], flat[10:]], cut.map_shape, 50, seed=3))  # chunks read alike
    hits = (some[:, None, :] == every[None, :, :]).all(-1).any(1)
    assert bool(hits.all())
    assert torch.equal(sample_rows(flat, cut.map_shape, None), every)


def test_distill_through_a_channel_layer_and_the_saved_pipeline(teacher, x, tmp_path):
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(2))
    r = distill(teacher, (x, y), layer="layer3.0", method="bregman", student={"arch": "resnet8", "base_width": 2},
                n_components=3, epochs=1, batch_size=8, fit_rows=100, measure_latency=False, test=(x[:8], y[:8]))
    assert r.settings["layout"] == "channels" and r.k == 3
    assert r.settings["coefficient_loss"] == "huber"  # "auto" on a coefficient map (no copies here)
    # the label term's default on a map: 0.1 per value of the k x H x W coefficient map
    assert r.settings["label_weight"] == pytest.approx(0.1 * 3 * 4 * 4)
    assert "label_loss" in r.history, sorted(r.history)
    assert r.representation.layout == "channels"
    assert r.student(x[:2]).shape == (2, 3, 4, 4)  # a k-channel coefficient map of the layer's size
    # the teacher's own coefficients through the imported layer and the head reproduce it closely
    assert r.metrics["test_representation_agreement"] >= 0.75
    r.save(tmp_path, onnx=False)
    program = torch.export.load(str(tmp_path / "student.pt2")).module()
    torch.testing.assert_close(program(x[:5]), r.model(x[:5]), rtol=1e-5, atol=1e-5)
    rebuilt, manifest = load_student(tmp_path)
    assert manifest["map_head"] == {"channels": 3, "size": [4, 4], "flatten": False}
    torch.testing.assert_close(rebuilt(x[:3]), r.student(x[:3]), rtol=0, atol=0)
    assert ExportedLayer.load(tmp_path / "layer").layout == "channels"


def test_layout_errors_say_what_to_use(teacher, x):
    with pytest.raises(LayoutError, match="layout 'flat'"):
        resolve_cut(teacher, "fc", x[:2], layout="channels")
    with pytest.raises(StudentSpecError, match="conv student"):
        build_student({"arch": "mlp"}, IMAGE, 3, map_head={"channels": 3, "size": [4, 4]})
    # the default layout with an mlp student stays flat
    r = distill(teacher, (x, None), layer="layer3.0", method="bregman", n_components=2, epochs=1, measure_latency=False)
    assert r.settings["layout"] == "flat" and r.representation.d == 8 * 16


def test_crop_flip_matches_a_per_image_reference():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    g = torch.Generator().manual_seed(5)
    out = crop_flip(x, 2, True, g)
    g = torch.Generator().manual_seed(5)  # the same draws, one image at a time
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    flips = torch.rand(2, generator=g) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        ref = padded[i, :, oy[i]:oy[i] + 5, ox[i]:ox[i] + 6]
        torch.testing.assert_close(out[i], ref.flip(-1) if flips[i] else ref, rtol=0, atol=0)
    views, labels = image_views(x.to(torch.uint8), torch.tensor([1, 2]), 3, padding=1)
    assert views.shape == (8, 3, 5, 6) and views.dtype == torch.uint8 and labels.tolist() == [1, 2] * 4
    assert torch.equal(views[:2], x.to(torch.uint8))
    with pytest.raises(ValueError, match="image inputs"):
        image_views(torch.zeros(4, 8), None, 1)
