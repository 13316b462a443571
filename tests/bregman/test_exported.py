"""ExportedLayer: forward = reconstruct, frozen, bit-exact save/load, torch.export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bregman.exported import ExportedLayer, ExportedLayerError
from bregman.pca import BregmanPCA
from bregman.transfers import get_transfer
from tests.bregman._pca_fixtures import data_for, single_thread  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", params=["leaky_relu", "softmax", "relu"])
def fitted(request):
    name = request.param
    A = data_for(name, n=160, d=7, seed=21)
    params = {"negative_slope": 0.05} if name == "leaky_relu" else None
    est = BregmanPCA(name, n_components=3, transfer_params=params)
    C = est.fit_transform(A)
    return est, A, C


def test_forward_reproduces_reconstruct_and_the_fit_divergence(fitted):
    est, A, C = fitted
    layer = est.export_layer(layer="2", teacher_sha256="abc")
    assert layer.k == 3 and layer.d == 7 and layer.transfer == est.transfer_
    out = layer(C)
    torch.testing.assert_close(out, est.reconstruct(C), rtol=0, atol=0)
    # the teacher's coefficients pass through the layer with exactly the fit's divergence
    div = est.transfer_.divergence(layer.preactivation(C), est.transfer_.remove_gauge(A)).mean()
    assert float(div) == pytest.approx(est.divergence_, rel=1e-12)
    assert layer.manifest["metadata"] == {"layer": "2", "teacher_sha256": "abc"}


def test_layer_is_frozen(fitted):
    est, _, _ = fitted
    layer = est.export_layer()
    assert list(layer.parameters()) == []
    assert {name for name, _ in layer.named_buffers()} == {"mean", "components"}
    assert not any(b.requires_grad for b in layer.buffers())


def test_save_load_is_bit_exact(fitted, tmp_path):
    est, _, C = fitted
    layer = est.export_layer()
    layer.save(tmp_path)
    manifest = json.loads((tmp_path / "layer.json").read_text())
    for key in ("format_version", "transfer", "k", "d", "divergence", "ridge", "hessian_floor", "dtype"):
        assert key in manifest
    assert manifest["transfer"] == est.transfer_.to_dict()
    assert manifest["divergence"]["fit"] == est.divergence_
    assert manifest["divergence"]["euclidean_pca"] == est.pca_divergence_
    assert manifest["ridge"] == est.ridge_
    loaded = ExportedLayer.load(tmp_path)
    assert torch.equal(loaded.mean, layer.mean) and torch.equal(loaded.components, layer.components)
    assert loaded.mean.dtype == layer.mean.dtype
    assert loaded.transfer == layer.transfer
    assert torch.equal(loaded(C), layer(C))
    assert loaded.manifest == json.loads(json.dumps(layer.manifest))


def test_transfer_parameters_are_stored_as_tensors(tmp_path):
    from safetensors.torch import load_file

    A = data_for("leaky_relu", n=100, d=5, seed=22)
    est = BregmanPCA(get_transfer("leaky_relu", negative_slope=0.2), n_components=2).fit(A)
    est.export_layer().save(tmp_path)
    tensors = load_file(str(tmp_path / "layer.safetensors"))
    assert set(tensors) == {"mean", "components", "transfer.negative_slope"}
    assert float(tensors["transfer.negative_slope"]) == 0.2
    assert tensors["components"].shape == (2, 5)


def test_survives_torch_export(fitted):
    est, _, C = fitted
    layer = est.export_layer()
    program = torch.export.export(layer, (C[:4],))
    assert list(program.graph_signature.parameters) == []  # frozen: buffers only
    torch.testing.assert_close(program.module()(C[4:8]), layer(C[4:8]), rtol=0, atol=0)


def test_exported_program_round_trips_through_a_file(tmp_path):
    A = data_for("sigmoid", n=100, d=5, seed=23)
    est = BregmanPCA("sigmoid", n_components=2).fit(A)
    layer = est.export_layer()
    C = est.transform(A)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(layer, (C[:4],), dynamic_shapes={"c": {0: batch}})
    torch.export.save(program, str(tmp_path / "layer.pt2"))
    reloaded = torch.export.load(str(tmp_path / "layer.pt2"))
    torch.testing.assert_close(reloaded.module()(C), layer(C), rtol=0, atol=0)


def test_numpy_fit_exports_tensors():
    A = data_for("tanh", n=100, d=5, seed=24).numpy()
    est = BregmanPCA("tanh", n_components=2).fit(A)
    layer = est.export_layer()
    C = est.transform(A)
    np.testing.assert_array_equal(layer(torch.from_numpy(C)).numpy(), est.reconstruct(C))


def test_load_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ExportedLayerError, match="missing layer.safetensors, layer.json"):
        ExportedLayer.load(tmp_path)
    layer = ExportedLayer(torch.zeros(3), torch.eye(2, 3), "softmax")
    layer.save(tmp_path)
    manifest = json.loads((tmp_path / "layer.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "layer.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportedLayerError, match="format_version 99"):
        ExportedLayer.load(tmp_path)
    (tmp_path / "layer.json").write_text("{not json")
    with pytest.raises(ExportedLayerError, match="not valid JSON"):
        ExportedLayer.load(tmp_path)
    assert issubclass(ExportedLayerError, ValueError)


def test_constructor_validates_shapes():
    with pytest.raises(ExportedLayerError, match="same d"):
        ExportedLayer(torch.zeros(4), torch.zeros(2, 3), "identity")
    with pytest.raises(ExportedLayerError, match="dtype"):
        ExportedLayer(torch.zeros(3, dtype=torch.float64), torch.zeros(2, 3), "identity")


def test_a_loaded_layer_projects_like_the_estimator(fitted, tmp_path):
    from bregman.pca import project_coefficients

    est, A, _ = fitted
    est.export_layer().save(tmp_path)
    layer = ExportedLayer.load(tmp_path)
    C = project_coefficients(layer.transfer, layer.mean, layer.components, A, ridge=layer.manifest["ridge"])
    # same solver and numbers; only the memory layout of V differs (BLAS round-off)
    torch.testing.assert_close(C, est.transform(A), rtol=0, atol=1e-10)


def test_channels_layout_needs_a_spatial_shape_and_an_elementwise_transfer():
    with pytest.raises(ExportedLayerError, match="spatial_shape"):
        ExportedLayer(torch.zeros(3), torch.eye(2, 3), "relu", layout="channels")
    with pytest.raises(ExportedLayerError, match="couples"):
        ExportedLayer(torch.zeros(3), torch.eye(2, 3), "softmax", layout="channels", spatial_shape=(2, 2))
    layer = ExportedLayer(torch.zeros(3), torch.eye(2, 3), "relu", layout="channels", spatial_shape=(2, 2))
    assert layer(torch.ones(5, 2, 2, 2)).shape == (5, 3, 2, 2) and layer.manifest["layout"] == "channels"
    assert layer.with_layout("flat").manifest.get("spatial_shape") is None


def _saved_manifest(tmp_path, layer):
    layer.save(tmp_path)
    return json.loads((tmp_path / "layer.json").read_text())


def test_layer_json_is_version_2_with_its_layout(tmp_path):
    from bregman.exported import FORMAT_VERSION

    assert FORMAT_VERSION == 2
    flat = _saved_manifest(tmp_path / "flat", ExportedLayer(torch.zeros(3), torch.eye(2, 3), "relu"))
    assert flat["format_version"] == 2 and flat["layout"] == "flat" and "spatial_shape" not in flat
    conv = ExportedLayer(torch.zeros(3), torch.eye(2, 3), "relu", layout="channels", spatial_shape=(2, 2))
    manifest = _saved_manifest(tmp_path / "conv", conv)
    assert manifest["format_version"] == 2 and manifest["layout"] == "channels" and manifest["spatial_shape"] == [2, 2]
    assert ExportedLayer.load(tmp_path / "conv").spatial_shape == (2, 2)


def test_a_version_1_layer_json_still_loads_as_a_flat_layer(tmp_path):
    layer = ExportedLayer(torch.randn(3, generator=torch.Generator().manual_seed(0)), torch.eye(2, 3), "tanh")
    manifest = _saved_manifest(tmp_path, layer)
    # what the library wrote before the channels layout: version 1, no layout key
    manifest["format_version"] = 1
    del manifest["layout"]
    (tmp_path / "layer.json").write_text(json.dumps(manifest))
    old = ExportedLayer.load(tmp_path)
    assert old.layout == "flat" and old.spatial_shape is None
    c = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(old(c), layer(c), rtol=0, atol=0)
    old.save(tmp_path / "again")  # saving it again writes the current version
    assert json.loads((tmp_path / "again" / "layer.json").read_text())["format_version"] == 2


def test_a_newer_or_damaged_layer_json_is_refused_with_the_reason(tmp_path):
    manifest = _saved_manifest(tmp_path, ExportedLayer(torch.zeros(3), torch.eye(2, 3), "relu"))
    for version, match in ((3, "format_version 3, newer than this library reads \\(1 to 2\\).*upgrade"),
                           (0, "format_version 0; this library reads versions 1 to 2"),
                           ("2", "format_version '2'")):
        (tmp_path / "layer.json").write_text(json.dumps({**manifest, "format_version": version}))
        with pytest.raises(ExportedLayerError, match=match):
            ExportedLayer.load(tmp_path)
    (tmp_path / "layer.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "layout"}))
    with pytest.raises(ExportedLayerError, match="lacks 'layout'"):
        ExportedLayer.load(tmp_path)
