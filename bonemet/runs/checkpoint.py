"""Checkpoints are plain state dicts plus JSON-able metadata, loaded with ``weights_only=True``:
a checkpoint is data, never code. A finished fold names its checkpoint in ``done.json``."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import BonemetError, first_line
from ..fileio import atomic_path, read_json
from ..models.weights import weight_mismatch

CHECKPOINT_NAMES = ("last.pt", "best.pt")


def save_checkpoint(path: str | Path, **content: Any) -> None:
    """Write ``content`` (state dicts, numbers, strings, lists) atomically, every tensor as a CPU copy: a
    checkpoint saved on a GPU loads on a machine without one. The same content gives the same bytes wherever it is
    written (saved through a file object, the archive inside is not named after the temporary file), so a model
    trained again gets the SHA-256 it had."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(on_cpu(content), fh)


def on_cpu(obj: Any) -> Any:
    """``obj`` with its tensors (at any depth of dicts, lists and tuples) on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; a damaged or foreign file is one clear line."""
    path = Path(path)
    if not path.exists():
        raise BonemetError("checkpoint not found", path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text runs to 6-8 lines and suggests weights_only=False
        detail = _unpickler_detail(exc)
        if "GLOBAL" in detail:  # a reference to a function or class: what a pickle runs code with
            raise BonemetError(f"refused: the checkpoint calls or builds Python objects ({detail}); bonemet loads "
                               "checkpoints as data, never as code", path) from None
        raise BonemetError(f"not a bonemet checkpoint or damaged (the safe loader stops at: {detail})", path) from None
    except Exception as exc:  # truncated or foreign files fail in many ways
        raise BonemetError(f"not a bonemet checkpoint or damaged ({type(exc).__name__}: {first_line(exc)})",
                           path) from None
    if not isinstance(ck, dict):
        raise BonemetError("not a bonemet checkpoint (it holds no dictionary of weights)", path)
    return ck


def _unpickler_detail(exc: Exception) -> str:
    """The one line of torch's weights-only refusal that says what it met (an opcode, a global)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "Unsupported" in line or "unsupported GLOBAL" in line:
            return line.split(" whose module")[0][:200]
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1][:200]
    return first_line(exc)


def load_weights(model: torch.nn.Module, ck: dict[str, Any], path: str | Path) -> torch.nn.Module:
    """Put the checkpoint's ``model`` weights into ``model``; a checkpoint that does not fit is one clear line."""
    state = ck.get("model")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BonemetError("not a bonemet checkpoint (no 'model' weights in it)", path)
    what = weight_mismatch(state, model.state_dict())
    if what:
        raise BonemetError(f"the checkpoint does not fit the model its run's config.json describes: {what}", path)
    model.load_state_dict(state)
    return model


def finished_checkpoint(fold_dir: str | Path, what: str, hint: str = "") -> Path:
    """The checkpoint a finished fold (``what``: "fold 2", "model 0") predicts with, as its ``done.json`` names it;
    ``hint`` follows the message when the fold has not finished."""
    fold_dir = Path(fold_dir)
    done = fold_dir / "done.json"
    if not done.exists():
        raise BonemetError(f"{what} has not finished training{hint}", fold_dir)
    info = read_json(done, "done.json")
    name = info.get("checkpoint") if isinstance(info, dict) else None
    if name not in CHECKPOINT_NAMES:
        raise BonemetError(f"done.json names no checkpoint of this fold (expected one of "
                           f"{', '.join(CHECKPOINT_NAMES)}, found {name!r})", done)
    return fold_dir / name
