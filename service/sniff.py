"""Recognize an uploaded file's format from its content, never its name, and never unpickle it.

The recognition itself is :func:`bregman._sniff.sniff` (torch-free, shared with the library's
``detect_format``); this module turns its answer into what the API accepts:

- teachers: ``pt2`` (torch.export.save), ``safetensors``, ``state_dict`` (a torch.save zip whose
  pickle names only tensor-rebuilding helpers; a worker loads it weights-only);
- data sets: ``npz`` (numpy.savez) or ``safetensors``.
A bare pickle (a legacy torch.save or pickle.dump), a TorchScript archive, a whole pickled model
and a zip that breaks the archive limits (bombs, links, traversal names) are refused here.
"""
from __future__ import annotations

from pathlib import Path

from bregman._sniff import UnsafeArchiveError, sniff

# the recipe of bregman.teachers.PT2_RECIPE, repeated here because that module imports torch
_PT2_RECIPE = (
    "ep = torch.export.export(model.eval(), (example_batch,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)); "
    'torch.export.save(ep, "teacher.pt2")'
)


class SniffError(ValueError):
    """The content is not an accepted format; the message says what it is and what to send."""


class PickleRefused(SniffError):
    pass


PICKLE_MESSAGE = (
    "the file is a Python pickle (a legacy torch.save or pickle.dump); pickles can run arbitrary code "
    "when loaded, so they are refused. Send a torch.export program (torch.export.save, .pt2), the "
    "weights as safetensors with a manifest, or a state_dict saved by torch.save (zip format)"
)


def _kind(path: Path, empty_pickle_message: str):
    try:
        found = sniff(path)
    except UnsafeArchiveError as exc:
        raise SniffError(str(exc)) from None
    if found.kind == "empty":
        raise SniffError("the file is empty")
    if found.kind == "pickle":
        raise PickleRefused(empty_pickle_message)
    return found


def sniff_teacher(path: str | Path) -> str:
    """``"pt2" | "safetensors" | "state_dict"``, or :class:`SniffError` saying what is wrong."""
    found = _kind(Path(path), PICKLE_MESSAGE)
    if found.kind == "state_dict" and found.pickled_classes:
        raise PickleRefused(
            f"the torch.save file holds a whole pickled model or other objects ({', '.join(found.pickled_classes[:3])}), "
            "which only full unpickling (running code) can load, so it was refused. Re-save it as a torch.export "
            f"program: {_PT2_RECIPE}; or send model.state_dict() (torch.save or safetensors) with a manifest "
            "naming the architecture"
        )
    if found.kind in ("pt2", "safetensors", "state_dict"):
        return found.kind
    if found.kind == "torchscript":
        raise SniffError(
            "the file is a TorchScript archive (torch.jit.save), which runs code when loaded; re-save the model "
            f"as a torch.export program: {_PT2_RECIPE}"
        )
    if found.kind in ("npz", "zip"):
        raise SniffError(
            "the zip archive is neither a torch.export program (.pt2, written by torch.export.save) nor a "
            "torch.save file; send one of those, or the weights as safetensors"
        )
    raise SniffError(
        "unrecognized teacher format: expected a torch.export program (.pt2), a safetensors file or a "
        "torch.save state_dict (zip); the content matches none of them (the file name is not used)"
    )


def sniff_dataset(path: str | Path) -> str:
    """``"npz" | "safetensors"``, or :class:`SniffError`."""
    found = _kind(
        Path(path),
        "the file is a Python pickle; pickles can run code when loaded, so they are refused. Send an "
        ".npz (numpy.savez) or a safetensors file with x_train, y_train, x_test, y_test",
    )
    if found.kind in ("npz", "safetensors"):
        return found.kind
    if found.kind in ("pt2", "torchscript", "state_dict", "zip"):
        raise SniffError("the zip archive is not an .npz of arrays (numpy.savez); send an .npz or safetensors file")
    raise SniffError(
        "unrecognized data set format: send an .npz (numpy.savez) or a safetensors file with arrays "
        "x_train, y_train, x_test, y_test"
    )


def manifest_required(fmt: str) -> bool:
    """Weights-only formats need an architecture manifest to be rebuilt."""
    return fmt in ("safetensors", "state_dict")
