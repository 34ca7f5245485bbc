"""Training checkpoints as safetensors: no pickle, so loading one can never run code.

A checkpoint is any nested state (model, optimiser and scheduler state dicts,
RNG states, history): its tensors go into the safetensors file, and everything
else into a JSON skeleton in the file's metadata that says where each tensor goes.
Writes are atomic, so a run killed while saving, or a disk that fills up, leaves the previous checkpoint whole.
"""

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file


SLACK_BYTES = 4 * 2**20  # room a write needs beyond its tensors: metadata, the filesystem's own blocks


class CheckpointError(ValueError):
    """The checkpoint is missing, damaged, or from an incompatible run."""


class WriteError(OSError):
    """A checkpoint or a run's output could not be written (a full or read-only disk); what was there stays whole."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically; WriteError, with the previous checkpoint whole, when it cannot be."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(state, tensors)
    partial = path.with_name(path.name + ".partial")
    with writing(f"the checkpoint {path}", partial):
        path.parent.mkdir(parents=True, exist_ok=True)
        require_room(path.parent, sum(t.nbytes for t in tensors.values()), f"the checkpoint {path}")
        save_file(tensors, partial, metadata={"catsdogs_checkpoint": json.dumps(skeleton)})
        os.replace(partial, path)


def require_room(folder: Path, nbytes: int, what: str) -> None:
    """WriteError before writing when the disk holding `folder` has less than `nbytes` (plus slack) free."""
    free = shutil.disk_usage(folder).free
    if free < nbytes + SLACK_BYTES:
        raise WriteError(f"the disk is full: {what} needs {(nbytes + SLACK_BYTES) / 1e6:.0f} MB and "
                         f"{folder} has {free / 1e6:.0f} MB free")


@contextmanager
def writing(what: str, leftover: Path | None = None) -> Iterator[None]:
    """Turns a failed write (OSError, or safetensors' own error for one) into a WriteError that says what could not
    be written and why, after removing the half-written `leftover`."""
    try:
        yield
    except (OSError, SafetensorError) as error:
        if leftover is not None:
            leftover.unlink(missing_ok=True)
        if isinstance(error, WriteError):
            raise
        raise WriteError(f"cannot write {what}: {_why(error)}") from error


def _why(error: Exception) -> str:
    """The reason in words: an OSError's strerror; safetensors wraps the OS's message in its own."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    found = re.search(r'message: "([^"]+)"|I/O error: (.+?) \(os error \d+\)', str(error))
    return next(group for group in found.groups() if group) if found else str(error)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (start without --resume)")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
        skeleton = json.loads(metadata["catsdogs_checkpoint"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable catsdogs checkpoint ({error})") from error
    return _unpack(skeleton, tensors)


def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"tensor": key}
    if isinstance(obj, dict):  # keys may be ints (optimiser state): keep them as pairs
        return {"dict": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"tuple" if isinstance(obj, tuple) else "list": [_pack(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _unpack(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    (kind, content), = node.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {_unpack(k, tensors): _unpack(v, tensors) for k, v in content}
    if kind == "list":
        return [_unpack(v, tensors) for v in content]
    if kind == "tuple":
        return tuple(_unpack(v, tensors) for v in content)
    return content
