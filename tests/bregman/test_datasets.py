"""Data sets: the built-in digits, uploads in .npz / .safetensors, validation against a teacher."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from bregman.datasets import (
    BUILTIN_DATASETS,
    Dataset,
    DatasetError,
    load_builtin,
    load_dataset_file,
    validate_for_teacher,
)
from bregman.models import build_model
from bregman.teachers import Teacher
from tests.bregman._teacher_fixtures import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_builtin("digits")


@pytest.fixture
def mlp_teacher():
    return Teacher.from_module(build_model("mlp", in_features=64, hidden=[8], num_classes=10), (64,))


def test_digits_is_flat_scaled_and_split_stratified(digits):
    assert "digits" in BUILTIN_DATASETS
    assert digits.x_train.shape == (1437, 64) and digits.x_test.shape == (360, 64)
    assert digits.x_train.dtype == torch.float32
    assert float(digits.x_train.min()) == 0.0 and float(digits.x_train.max()) == 1.0
    assert digits.num_classes == 10
    test_counts = torch.bincount(digits.y_test, minlength=10)
    assert int(test_counts.min()) >= 35 and int(test_counts.max()) <= 37  # 360 rows over 10 classes, stratified
    again = load_builtin("digits")
    assert torch.equal(again.y_test, digits.y_test) and torch.equal(again.x_train, digits.x_train)


def test_digits_fit_a_cnn_teacher_by_reshaping(digits):
    cnn = Teacher.from_module(build_model("cnn", in_channels=1), (1, 8, 8))
    checked = validate_for_teacher(digits, cnn)
    assert checked.x_train.shape == (1437, 1, 8, 8)
    assert torch.equal(checked.x_train.reshape(1437, 64), digits.x_train)


def test_unknown_builtin_names_the_known_ones():
    with pytest.raises(DatasetError) as err:
        load_builtin("mnist")
    assert err.value.field == "name" and "digits" in str(err.value.expected)


def test_npz_upload_with_split(tmp_path):
    x = np.random.default_rng(0).random((12, 4), dtype=np.float32)
    y = np.arange(12) % 3
    split = np.array([0] * 9 + [1] * 3)
    np.savez(tmp_path / "d.npz", x=x, y=y, split=split)
    ds = load_dataset_file(tmp_path / "d.npz")
    assert (ds.n_train, ds.n_test, ds.num_classes, ds.name) == (9, 3, 3, "d")
    assert np.array_equal(ds.x_test.numpy(), x[9:]) and ds.y_train.dtype == torch.int64


def test_safetensors_upload_without_split_is_all_training(tmp_path):
    x = np.zeros((5, 2, 3), dtype=np.float32)
    path = tmp_path / "upload.bin"
    save_file({"x": x}, str(path))
    ds = load_dataset_file(path)
    assert ds.n_train == 5 and ds.n_test == 0 and ds.input_shape == (2, 3)
    assert ds.y_train is None and not ds.has_labels


def test_train_test_layout_is_accepted(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x_train=rng.random((6, 3)).astype(np.float32), y_train=np.arange(6) % 2,
             x_test=rng.random((2, 3)).astype(np.float32), y_test=np.array([1, 0]))
    ds = load_dataset_file(tmp_path / "d.npz")
    assert (ds.n_train, ds.n_test, ds.num_classes) == (6, 2, 2)


# ----------------------------------------------------------------- each error names its field
def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "field", "words"),
    [
        ({"x": np.zeros((4, 3), dtype=np.uint8)}, "x", "float"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.float32)}, "y", "integer"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(3, np.int64)}, "y", "(4,)"),
        ({"x": np.zeros((4, 3), np.float32), "split": np.array([0, 1, 2, 0])}, "split", "0 (train) or 1 (test)"),
        ({"y": np.zeros(4, np.int64)}, "x", "no 'x'"),
        ({"x": np.zeros((4, 3), np.float32), "weights": np.zeros(2)}, "file", "unexpected"),
    ],
)
def test_upload_errors_name_the_field(tmp_path, arrays, field, words):
    with pytest.raises(DatasetError) as err:
        load_dataset_file(_npz(tmp_path, **arrays))
    assert err.value.field == field
    assert words in str(err.value) or words in str(err.value.expected)


def test_object_arrays_are_not_unpickled(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DatasetError) as err:
        load_dataset_file(path)
    assert err.value.field == "file" and "pickle" in str(err.value)


def test_unrecognised_file(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(DatasetError) as err:
        load_dataset_file(path)
    assert err.value.field == "file" and ".npz" in str(err.value.expected)


def _dataset(x, y=None):
    return Dataset("t", x, y, x[:0], None if y is None else y[:0], None)


def test_validation_errors_name_the_field_and_expected_value(mlp_teacher):
    x = torch.rand(20, 64)
    with pytest.raises(DatasetError) as err:
        validate_for_teacher(_dataset(torch.rand(20, 10)), mlp_teacher)
    assert err.value.field == "x" and err.value.expected == [64]
    bad = x.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(DatasetError) as err:
        validate_for_teacher(_dataset(bad), mlp_teacher)
    assert err.value.field == "x_train" and "row 3" in str(err.value)
    with pytest.raises(DatasetError) as err:
        validate_for_teacher(_dataset(x, torch.full((20,), 10)), mlp_teacher)
    assert err.value.field == "y" and "[0, 9]" in str(err.value.expected)
    with pytest.raises(DatasetError) as err:
        validate_for_teacher(_dataset(x[:4]), mlp_teacher)
    assert err.value.field == "x_train" and "at least 10" in str(err.value.expected)
    with pytest.raises(DatasetError) as err:
        validate_for_teacher(_dataset(x.to(torch.int64)), mlp_teacher)
    assert err.value.field == "x_train" and err.value.expected == "float32"


def test_valid_dataset_passes_and_learns_num_classes(mlp_teacher):
    ds = validate_for_teacher(_dataset(torch.rand(20, 64), torch.arange(20) % 4), mlp_teacher)
    assert ds.num_classes == 10
