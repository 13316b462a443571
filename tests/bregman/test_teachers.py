"""Loading teachers: three formats, format detection, manifests, and refusal of anything that runs code."""
from __future__ import annotations

import json
import pickle
import shutil
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from bregman.teachers import (
    PT2_RECIPE,
    Teacher,
    TeacherFormatError,
    UnsafeTeacherError,
    detect_format,
    load_teacher,
    validate_manifest,
)
from tests.bregman._teacher_fixtures import (
    MLP_MANIFEST,
    Evil,
    ResidualNet,
    edit_json_member,
    evil_pickle_bytes,
    export_pt2,
    one_thread,  # noqa: F401  (fixture)
    randomize_batch_norm,
    rewrite_zip,
    small_mlp,
)
from bregman.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mlp_files(tmp_path):
    model = small_mlp()
    pt2 = export_pt2(model, torch.randn(2, 8), tmp_path / "teacher.pt2")
    st = tmp_path / "teacher.safetensors"
    save_file(model.state_dict(), str(st))
    sd = tmp_path / "teacher.pth"
    torch.save(model.state_dict(), str(sd))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(MLP_MANIFEST))
    return model, pt2, st, sd, manifest


def test_three_formats_give_identical_outputs(mlp_files):
    model, pt2, st, sd, manifest = mlp_files
    x = torch.randn(7, 8)
    expected = model(x)
    teachers = [load_teacher(pt2), load_teacher(st, manifest), load_teacher(sd, MLP_MANIFEST)]
    assert [t.format for t in teachers] == ["pt2", "safetensors", "state_dict"]
    for teacher in teachers:
        assert teacher.input_shape == (8,)
        assert teacher.parameter_count == sum(p.numel() for p in model.parameters())
        assert torch.equal(teacher.module(x), expected)


def test_cnn_with_batch_norm_loads_identically_from_weights(tmp_path):
    model = randomize_batch_norm(build_model("cnn", in_channels=1, channels=[3, 4], hidden=5, batch_norm=True))
    manifest = {"arch": "cnn", "args": {"in_channels": 1, "channels": [3, 4], "hidden": 5, "batch_norm": True}, "input_shape": [1, 8, 8]}
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(load_teacher(tmp_path / "w.safetensors", manifest).module(x), model(x))


def test_format_is_detected_from_content_not_name(mlp_files, tmp_path):
    _, pt2, st, sd, _ = mlp_files
    for src, fmt in ((pt2, "pt2"), (st, "safetensors"), (sd, "state_dict")):
        disguised = tmp_path / f"{fmt}.bin"
        shutil.copy(src, disguised)
        assert detect_format(disguised) == fmt
    legacy = tmp_path / "legacy.txt"
    torch.save(small_mlp().state_dict(), str(legacy), _use_new_zipfile_serialization=False)
    # a legacy (pre-zip) torch.save stream is a bare pickle: no archive to bound, refused like the API does
    assert detect_format(legacy) == "pickle"
    with pytest.raises(UnsafeTeacherError, match="legacy torch.save"):
        load_teacher(legacy, MLP_MANIFEST)
    junk = tmp_path / "teacher.pt2"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(TeacherFormatError, match="unrecognised"):
        detect_format(junk)


def test_safetensors_may_carry_its_manifest_in_metadata(tmp_path):
    model = small_mlp()
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path), metadata={"manifest": json.dumps(MLP_MANIFEST)})
    teacher = load_teacher(path)
    assert teacher.manifest["arch"] == "mlp"
    x = torch.randn(2, 8)
    assert torch.equal(teacher.module(x), model(x))


def test_weights_without_manifest_are_refused_with_an_example(mlp_files):
    _, _, st, _, _ = mlp_files
    with pytest.raises(TeacherFormatError, match="needs a manifest.*arch"):
        load_teacher(st)


# ------------------------------------------------------------------------ no pickles
def test_whole_pickled_model_is_refused_with_resave_help(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small_mlp(), str(path))  # a whole nn.Module: needs full unpickling
    with pytest.raises(UnsafeTeacherError) as err:
        load_teacher(path, MLP_MANIFEST)
    message = str(err.value)
    assert "weights_only" in message and "torch.export.export" in message and "safetensors" in message


def test_whole_pickled_model_without_manifest_is_told_to_resave_first(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small_mlp(), str(path))
    with pytest.raises(UnsafeTeacherError) as err:  # not "needs a manifest": re-saving comes first
        load_teacher(path)
    assert "torch.export.export" in str(err.value) and "manifest" not in str(err.value).split("safetensors")[0]


def test_torch_save_with_payload_is_refused_and_payload_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "state.pt"
    torch.save({"0.weight": torch.zeros(6, 8), "evil": Evil(target)}, str(path))
    assert not target.exists()
    with pytest.raises(UnsafeTeacherError):
        load_teacher(path, MLP_MANIFEST)
    assert not target.exists()


def test_plain_pickle_with_payload_is_refused_and_payload_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "teacher.safetensors"  # the name lies
    path.write_bytes(evil_pickle_bytes(target))
    assert detect_format(path) == "pickle"
    with pytest.raises(UnsafeTeacherError, match="re-save|Re-save"):
        load_teacher(path, MLP_MANIFEST)
    assert not target.exists()
    # proof that the payload is live: plain unpickling would have written the file
    pickle.loads(path.read_bytes())
    assert target.exists()


def test_torchscript_is_refused(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(small_mlp()), str(path))
    assert detect_format(path) == "torchscript"
    with pytest.raises(UnsafeTeacherError, match="TorchScript"):
        load_teacher(path)


# ------------------------------------------------------------------ crafted .pt2 archives
@pytest.fixture
def clean_pt2(tmp_path):
    return export_pt2(ResidualNet(), torch.randn(2, 6), tmp_path / "clean.pt2")


def test_clean_pt2_of_user_code_loads(clean_pt2):
    teacher = load_teacher(clean_pt2)
    x = torch.randn(3, 6)
    ref = torch.export.load(str(clean_pt2)).module()(x)
    assert torch.equal(teacher.module(x), ref)


def _craft(clean, tmp_path, edit):
    return rewrite_zip(clean, tmp_path / "crafted.pt2", edit)


def test_pt2_with_pickled_sample_inputs_is_refused(clean_pt2, tmp_path):
    # torch.export.load would fall back to torch.load(weights_only=False) on these bytes
    target = tmp_path / "pwned.txt"
    crafted = _craft(clean_pt2, tmp_path, lambda n, d: evil_pickle_bytes(target) if "sample_inputs" in n else None)
    with pytest.raises(UnsafeTeacherError, match="sample inputs"):
        load_teacher(crafted)
    assert not target.exists()


def test_pt2_with_pickled_weight_is_refused(clean_pt2, tmp_path):
    target = tmp_path / "pwned.txt"

    def change(doc):
        first = next(iter(doc["config"].values()))
        first["use_pickle"] = True

    def edit(name, data):
        if name.endswith("data/weights/weight_0"):
            return evil_pickle_bytes(target)
        return edit_json_member("model_weights_config.json", change)(name, data)

    with pytest.raises(UnsafeTeacherError, match="pickle"):
        load_teacher(_craft(clean_pt2, tmp_path, edit))
    assert not target.exists()


def test_pt2_with_guard_code_is_refused(clean_pt2, tmp_path):
    target = tmp_path / "pwned.txt"
    code = f"__import__('pathlib').Path({str(target)!r}).write_text('x') is None"
    crafted = _craft(clean_pt2, tmp_path, edit_json_member("models/model.json", lambda d: d.update(guards_code=[code])))
    with pytest.raises(UnsafeTeacherError, match="guard code"):
        teacher = load_teacher(crafted)
        teacher.module(torch.randn(2, 6))
    assert not target.exists()


def test_pt2_with_shape_expression_injection_is_refused(clean_pt2, tmp_path):
    target = tmp_path / "pwned.txt"
    evil = f"__import__('pathlib').Path('{target}').write_text('x')"

    def change(doc):
        text = json.dumps(doc).replace("Symbol(", evil.replace('"', "") + " + Symbol(", 1)
        doc.clear()
        doc.update(json.loads(text))

    with pytest.raises(UnsafeTeacherError, match="shape expression"):
        load_teacher(_craft(clean_pt2, tmp_path, edit_json_member("models/model.json", change)))
    assert not target.exists()


def test_pt2_calling_a_non_operator_is_refused(clean_pt2, tmp_path):
    def change(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    with pytest.raises(UnsafeTeacherError, match="torch.os.system"):
        load_teacher(_craft(clean_pt2, tmp_path, edit_json_member("models/model.json", change)))


def test_pt2_with_compiled_code_is_refused(clean_pt2, tmp_path):
    crafted = tmp_path / "aoti.pt2"
    shutil.copy(clean_pt2, crafted)
    with zipfile.ZipFile(crafted, "a") as zf:
        root = zf.namelist()[0].split("/", 1)[0]
        zf.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(UnsafeTeacherError, match="compiled code"):
        load_teacher(crafted)


def test_pt2_with_fixed_batch_is_refused_with_recipe(tmp_path):
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(small_mlp().eval(), (torch.randn(4, 8),)), str(path))
    with pytest.raises(TeacherFormatError, match="fixed batch size of 4") as err:
        load_teacher(path)
    assert "Dim.DYNAMIC" in str(err.value)


def test_recipe_is_three_lines():
    assert len(PT2_RECIPE.splitlines()) == 3 and "torch.export.save" in PT2_RECIPE


# ---------------------------------------------------------------------------- manifests
def test_manifest_unknown_arch_lists_known_ones():
    with pytest.raises(TeacherFormatError) as err:
        validate_manifest({"arch": "transformer", "args": {}})
    assert "transformer" in str(err.value) and "resnet20" in str(err.value)


def test_manifest_unknown_key_and_missing_input_shape():
    with pytest.raises(TeacherFormatError, match="unknown key.*'inputshape'"):
        validate_manifest({**MLP_MANIFEST, "inputshape": [8]})
    with pytest.raises(TeacherFormatError, match="input_shape"):
        validate_manifest({"arch": "cnn", "args": {}})
    assert validate_manifest({"arch": "mlp", "args": {"in_features": 5}})["input_shape"] == [5]
    with pytest.raises(TeacherFormatError, match="positive integers"):
        validate_manifest({"arch": "cnn", "args": {}, "input_shape": [1, 0, 8]})


def test_missing_and_extra_weights_are_named(tmp_path):
    weights = small_mlp().state_dict()
    del weights["2.bias"]
    weights["9.weight"] = torch.zeros(1)
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    with pytest.raises(TeacherFormatError) as err:
        load_teacher(path, MLP_MANIFEST)
    assert "missing weights ['2.bias']" in str(err.value) and "unexpected weights ['9.weight']" in str(err.value)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    weights = small_mlp().state_dict()
    weights["0.weight"] = torch.zeros(6, 9)
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    with pytest.raises(TeacherFormatError) as err:
        load_teacher(path, MLP_MANIFEST)
    assert "'0.weight'" in str(err.value) and "(6, 9)" in str(err.value) and "(6, 8)" in str(err.value)


def test_bad_arguments_in_manifest_are_reported(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(small_mlp().state_dict(), str(path))
    with pytest.raises(TeacherFormatError, match="dropout"):
        load_teacher(path, {"arch": "mlp", "args": {**MLP_MANIFEST["args"], "dropout": 0.1}})


def test_from_module_and_example_input():
    teacher = Teacher.from_module(small_mlp(), (8,))
    assert teacher.format == "module" and teacher.input_shape == (8,)
    assert teacher.example_input(3).shape == (3, 8)
    assert teacher(teacher.example_input(3)).shape == (3, 3)
