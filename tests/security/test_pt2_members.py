"""Hostile .pt2 archives: members torch would load unvetted, pickles, links, traversal, nesting.

Each test builds its file, loads it through ``bregman.load_teacher`` and asserts the refusal
names the reason and the payload's marker file never appears. The three "second program"
variants are first shown live: the unsafe ``torch.export.load`` (run in a child) does create
the marker.
"""
from __future__ import annotations

import json

import pytest
import torch

from bregman import UnsafeTeacherError, load_teacher
from bregman._pt2_guard import UnsafeArchiveError, load_pt2_safely, read_pt2
from tests.security._child import run_in_child
from tests.security._corpus import (
    Entry,
    TinyNet,
    clean_pt2,
    edit_json,
    evil_pickle,
    evil_torch_save,
    members,
    probe,
    symlink,
    write_zip,
)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return clean_pt2(tmp_path_factory.mktemp("pt2") / "clean.pt2")


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


def _root(entries):
    return entries[0].name.split("/", 1)[0]


def _get(entries, suffix):
    return next(e for e in entries if e.name.endswith(suffix))


def second_program(clean, path, marker, variant):
    """A copy of the archive with a second program member ``models/pwned_json`` (program 'pwned')."""
    entries = members(clean)
    root = _root(entries)
    program = _get(entries, "models/model.json").data
    weights = _get(entries, "model_weights_config.json").data
    constants = _get(entries, "model_constants_config.json").data
    extra = [Entry(f"{root}/models/pwned_json", program),
             Entry(f"{root}/data/constants/pwned_constants_config.json", constants)]
    if variant == "sample_inputs":
        extra += [Entry(f"{root}/data/weights/pwned_weights_config.json", weights),
                  Entry(f"{root}/data/sample_inputs/pwned.pt", evil_pickle(marker))]
    elif variant == "use_pickle_weight":
        doc = json.loads(weights)
        first = next(iter(doc["config"].values()))
        first.update(path_name="weight_99", use_pickle=True)
        extra += [Entry(f"{root}/data/weights/pwned_weights_config.json", json.dumps(doc).encode()),
                  Entry(f"{root}/data/weights/weight_99", evil_pickle(marker)),
                  Entry(f"{root}/data/sample_inputs/pwned.pt", _get(entries, "sample_inputs/model.pt").data)]
    elif variant == "legacy_weights":
        extra += [Entry(f"{root}/data/weights/pwned.pt", evil_pickle(marker)),
                  Entry(f"{root}/data/sample_inputs/pwned.pt", _get(entries, "sample_inputs/model.pt").data)]
    return write_zip(path, entries + extra)


VARIANTS = ["sample_inputs", "use_pickle_weight", "legacy_weights"]


def test_second_program_payloads_are_live_under_torch_export_load(clean, tmp_path):
    files, markers = [], []
    for v in VARIANTS:
        m = tmp_path / f"PWNED-{v}"
        files.append(str(second_program(clean, tmp_path / f"{v}.pt2", m, v)))
        markers.append(m)
    run_in_child("tests.security._corpus:torch_export_load_each", files)
    assert [m.exists() for m in markers] == [True, True, True]  # the attack is real without our reader


@pytest.mark.parametrize("variant", VARIANTS)
def test_second_program_member_is_refused(clean, tmp_path, marker, variant):
    crafted = second_program(clean, tmp_path / "crafted.pt2", marker, variant)
    with pytest.raises(UnsafeTeacherError, match="second program member 'models/pwned_json'"):
        load_teacher(crafted)
    assert not marker.exists()


def _with(clean, tmp_path, change):
    entries = members(clean)
    return write_zip(tmp_path / "crafted.pt2", change(entries, _root(entries)))


@pytest.mark.parametrize("member", ["data/weights/model.pt", "data/constants/model.pt"])
def test_legacy_payload_files_are_refused(clean, tmp_path, marker, member):
    crafted = _with(clean, tmp_path, lambda es, r: es + [Entry(f"{r}/{member}", evil_pickle(marker))])
    with pytest.raises(UnsafeTeacherError, match="legacy pickled payload"):
        load_teacher(crafted)
    assert not marker.exists()


def _pickled_config(base, payload):
    def change(entries, root):
        def mark(doc):
            first = next(iter(doc["config"].values()))
            first["use_pickle"] = True
        entries = edit_json(entries, f"model_{base}_config.json", mark)
        doc = json.loads(_get(entries, f"model_{base}_config.json").data)
        path_name = next(iter(doc["config"].values()))["path_name"]
        return [Entry(e.name, payload) if e.name.endswith(f"data/{base}/{path_name}") else e
                for e in entries]
    return change


@pytest.mark.parametrize("base", ["weights", "constants"])
def test_pickled_weight_or_constant_is_refused(clean, tmp_path, marker, base):
    with pytest.raises(UnsafeTeacherError, match=f"its {base} entry .* is stored as a pickle"):
        load_teacher(_with(clean, tmp_path, _pickled_config(base, evil_pickle(marker))))
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["bare_pickle", "torch_save_with_object"])
def test_pickled_sample_inputs_are_refused(clean, tmp_path, marker, payload):
    data = evil_pickle(marker) if payload == "bare_pickle" else evil_torch_save(marker)
    crafted = _with(clean, tmp_path, lambda es, r: [Entry(e.name, data) if e.name.endswith("sample_inputs/model.pt") else e
                                                    for e in es])
    with pytest.raises(UnsafeTeacherError, match="sample inputs"):
        load_teacher(crafted)
    assert not marker.exists()


@pytest.mark.parametrize("prefix", ["opaque_obj_0", "custom_obj_0"])
def test_object_constants_are_refused(clean, tmp_path, marker, prefix):
    def change(entries, root):
        def point(doc):
            doc["config"]["evil"] = {"path_name": prefix, "is_param": False, "use_pickle": False, "tensor_meta": None}
        return edit_json(entries, "model_constants_config.json", point) + [
            Entry(f"{root}/data/constants/{prefix}", evil_pickle(marker))]
    with pytest.raises(UnsafeTeacherError, match="serialized Python object"):
        load_teacher(_with(clean, tmp_path, change))
    assert not marker.exists()


def test_duplicate_member_is_refused(clean, tmp_path, marker):
    code = f"__import__('os').system('touch {marker}') is None"

    def change(entries, root):
        program = json.loads(_get(entries, "models/model.json").data)
        program["guards_code"] = [code]
        return entries + [Entry(f"{root}/models/model.json", json.dumps(program).encode())]

    with pytest.raises(UnsafeTeacherError, match="appears twice"):
        load_teacher(_with(clean, tmp_path, change))
    assert not marker.exists()


def test_symlink_member_is_refused(clean, tmp_path):
    crafted = _with(clean, tmp_path, lambda es, r: [symlink(e.name, "/etc/passwd") if e.name.endswith("weight_0") else e
                                                    for e in es])
    with pytest.raises(UnsafeTeacherError, match="symbolic link"):
        load_teacher(crafted)


@pytest.mark.parametrize("name", ["{r}/../../../tmp/evil", "/{r}/models/model.json", "{r}\\models\\x.json",
                                  "{r}//data/weights/weight_0", "{r}/./archive_format"])
def test_traversal_and_odd_names_are_refused(clean, tmp_path, name):
    crafted = _with(clean, tmp_path, lambda es, r: es + [Entry(name.format(r=r), b"x")])
    with pytest.raises(UnsafeTeacherError, match="member name"):
        load_teacher(crafted)


def test_nested_archive_member_is_refused(clean, tmp_path, marker):
    inner = second_program(clean, tmp_path / "inner.pt2", marker, "sample_inputs").read_bytes()
    crafted = _with(clean, tmp_path, lambda es, r: es + [Entry(f"{r}/data/nested.pt2", inner)])
    with pytest.raises(UnsafeTeacherError, match="'data/nested.pt2' is not one that torch.export.save writes"):
        load_teacher(crafted)
    # a program member that is itself an archive is no JSON
    crafted = _with(clean, tmp_path, lambda es, r: [Entry(e.name, inner) if e.name.endswith("models/model.json") else e
                                                    for e in es])
    with pytest.raises(UnsafeTeacherError, match="not valid JSON"):
        load_teacher(crafted)
    assert not marker.exists()


@pytest.mark.parametrize("member,reason", [("data/aotinductor/model/model.so", "compiled code"),
                                           ("extra/notes.txt", "extra file"),
                                           ("data/weights/weight_77", "referenced by no config entry")])
def test_members_outside_one_program_are_refused(clean, tmp_path, member, reason):
    crafted = _with(clean, tmp_path, lambda es, r: es + [Entry(f"{r}/{member}", b"\x7fELF" * 4)])
    with pytest.raises(UnsafeTeacherError, match=reason):
        load_teacher(crafted)


def test_zero_byte_record_cannot_allocate(clean, tmp_path):
    # torch materializes an empty record as torch.zeros(sizes): a 1e12-element weight from 0 bytes
    def change(entries, root):
        def huge(doc):
            first = next(iter(doc["config"].values()))
            first["tensor_meta"]["sizes"] = [{"as_int": 10**6}, {"as_int": 10**6}]
            first["tensor_meta"]["strides"] = [{"as_int": 10**6}, {"as_int": 1}]
            return first["path_name"]
        doc = json.loads(_get(entries, "model_weights_config.json").data)
        path_name = huge(doc)
        entries = [Entry(e.name, json.dumps(doc).encode()) if e.name.endswith("model_weights_config.json") else e
                   for e in entries]
        return [Entry(e.name, b"") if e.name.endswith(f"data/weights/{path_name}") else e for e in entries]

    with pytest.raises(UnsafeTeacherError, match="reaches past its record"):
        load_teacher(_with(clean, tmp_path, change))


def test_clean_archive_loads_with_the_original_outputs(clean, tmp_path):
    teacher = load_teacher(clean)
    x = probe()
    reference = TinyNet().eval()(x)
    assert teacher.input_shape == (1, 6, 6)
    assert torch.allclose(teacher.module(x), reference, atol=1e-6)
    assert torch.equal(teacher.module(x), torch.export.load(str(clean)).module()(x))
    # torch only ever saw our rebuilt archive: exactly the allowlisted members
    names = set(read_pt2(clean))
    assert {"models/model.json", "data/sample_inputs/model.pt", "archive_format", "archive_version"} <= names
    assert all(n.startswith(("data/weights/", "data/constants/", "models/model.json", "data/sample_inputs/model.pt"))
               or n in ("archive_format", "archive_version", ".data/version", "byteorder") for n in names)


def test_reader_accepts_bytes_and_paths_alike(clean):
    x = probe()
    a = load_pt2_safely(clean).module()(x)
    b = load_pt2_safely(clean.read_bytes()).module()(x)
    assert torch.equal(a, b)
    with pytest.raises(UnsafeArchiveError, match="not a zip"):
        load_pt2_safely(b"not a zip at all")
