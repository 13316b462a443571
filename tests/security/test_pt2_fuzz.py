"""Mutated .pt2 archives: the reader loads an equivalent program or refuses, nothing else.

Hypothesis renames, drops, duplicates and adds members, overwrites bytes of the non-tensor
members, and replaces values anywhere in the JSON documents by values of another type or by
hostile strings (code, traversal names, operator paths). Every outcome must be one of
- refused with ``UnsafeTeacherError`` / ``TeacherFormatError`` (``UnsafeArchiveError`` inside);
- loaded, and the program gives the original outputs on a probe batch;
and the payload marker never appears.

Mutations that legitimately change a program's meaning (new weight bytes, one number swapped
for another) are left out: they load a different, equally harmless program.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bregman.teachers import TeacherFormatError, load_teacher
from tests.security._corpus import Entry, clean_pt2, evil_pickle, members, probe, write_zip

_TENSOR_RECORD = ("/data/weights/weight_", "/data/constants/tensor_")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    clean = clean_pt2(tmp / "clean.pt2")
    reference = load_teacher(clean).module(probe())
    return tmp, members(clean), reference


def _hostile_strings(marker: Path) -> list[str]:
    return [
        f"__import__('os').system('touch {marker}')",
        "torch.os.system", "torch.ops.aten.from_file.default", "builtins.exec",
        "../../../tmp/x", "/etc/passwd", "s0 + __import__('os').getpid()", "L['x'].__class__",
        "weight_99", "opaque_obj_0", "custom_obj_0", "", "\x00", "models/pwned_json",
    ]


def _json_paths(doc, prefix=()):
    """Every path (tuple of keys / indices) into a JSON tree, the root excluded."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(_json_paths(v, prefix + (k,)))
    return out


def _other_type_values(old, hostile):
    """Replacement values of a different JSON type than ``old`` (so no number-for-number swaps)."""
    candidates = [None, True, -1, 10**12, 1e308, [], {}, [1, 2], {"use_pickle": True}, *hostile]
    def kind(v):
        return "num" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
    return [v for v in candidates if kind(v) != kind(old)]


@st.composite
def mutations(draw, entries, marker):
    hostile = _hostile_strings(marker)
    entries = list(entries)
    root = entries[0].name.split("/", 1)[0]
    op = draw(st.sampled_from(["rename", "drop", "duplicate", "add", "bytes", "json", "json"]))
    i = draw(st.integers(0, len(entries) - 1))
    e = entries[i]
    if op == "rename":
        new = draw(st.sampled_from([f"{root}/models/pwned_json", f"{root}/models/model.jsonx", f"{root}/../x",
                                    f"{root}/data/weights/model.pt", f"{root}/extra/a", "other/" + e.name,
                                    e.name.upper(), e.name + "/", f"{root}/data/constants/opaque_obj_0"]))
        entries[i] = Entry(new, e.data)
    elif op == "drop":
        del entries[i]
    elif op == "duplicate":
        entries.append(Entry(e.name, evil_pickle(marker) if draw(st.booleans()) else e.data))
    elif op == "add":
        name = draw(st.sampled_from([f"{root}/models/pwned_json", f"{root}/data/sample_inputs/pwned.pt",
                                     f"{root}/data/weights/weight_99", f"{root}/data/constants/model.pt",
                                     f"{root}/data/aotinductor/model/a.so", f"{root}/x"]))
        entries.append(Entry(name, evil_pickle(marker)))
    elif op == "bytes":
        # overwrite bytes of a non-tensor member (tensor bytes are data: new bytes, new program)
        targets = [j for j, m in enumerate(entries) if not any(t in m.name for t in _TENSOR_RECORD)]
        j = draw(st.sampled_from(targets))
        data = bytearray(entries[j].data)
        if data:
            at = draw(st.integers(0, len(data) - 1))
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(patch)] = patch
        entries[j] = Entry(entries[j].name, bytes(data))
    else:
        jsons = [j for j, m in enumerate(entries) if m.name.endswith(".json")]
        j = draw(st.sampled_from(jsons))
        doc = json.loads(entries[j].data)
        path = draw(st.sampled_from(_json_paths(doc)))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = draw(st.sampled_from(_other_type_values(parent[path[-1]], hostile)))
        entries[j] = Entry(entries[j].name, json.dumps(doc).encode())
    return op, entries


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_archive_loads_equivalently_or_is_refused(corpus, data):
    tmp, entries, reference = corpus
    marker = tmp / "PWNED"
    op, mutated = data.draw(mutations(entries, marker))
    path = write_zip(tmp / "mutated.pt2", mutated)
    try:
        teacher = load_teacher(path)
    except TeacherFormatError as exc:  # UnsafeTeacherError is one; UnsafeArchiveError surfaces as it
        assert str(exc)  # a reason is given
    else:
        out = teacher.module(probe())
        assert torch.equal(out, reference), op
    assert not marker.exists()
