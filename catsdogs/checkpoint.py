"""Training checkpoints as safetensors: no pickle, so loading one can never run code.

A checkpoint is any nested state (model, optimiser and scheduler state dicts,
RNG states, history): its tensors go into the safetensors file, and everything
else into a JSON skeleton in the file's metadata that says where each tensor goes.
Writes are atomic, so a run killed while saving leaves the previous checkpoint whole.
"""

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """The checkpoint is missing, damaged, or from an incompatible run."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(state, tensors)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, partial, metadata={"catsdogs_checkpoint": json.dumps(skeleton)})
    os.replace(partial, path)


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
