"""How a state dict fits a model: the one line that says what does not."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


def weight_mismatch(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                    optional: Callable[[str], bool] = lambda key: False) -> str:
    """'' when ``state`` fits ``own`` (a model's state dict); otherwise how many tensors have another shape, are
    missing (keys for which ``optional`` is true may be) or are unknown to the model, each with an example."""
    shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and not optional(k)]
    unknown = [k for k in state if k not in own]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) of another shape (e.g. {k}: {list(state[k].shape)} in the file, "
                     f"{list(own[k].shape)} in the model)")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unknown:
        parts.append(f"{len(unknown)} unknown to the model (e.g. {unknown[0]})")
    return "; ".join(parts)
