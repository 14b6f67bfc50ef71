"""Checkpoints are plain state dicts plus JSON-able metadata, loaded with ``weights_only=True``:
a checkpoint is data, never code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import BonemetError
from ..fileio import atomic_path


def save_checkpoint(path: str | Path, **content: Any) -> None:
    """Write ``content`` (state dicts, numbers, strings, lists) atomically."""
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; a damaged or foreign file is one clear error."""
    path = Path(path)
    if not path.exists():
        raise BonemetError("checkpoint not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise BonemetError(f"not a bonemet checkpoint or damaged ({type(exc).__name__}: {exc})", path) from None
