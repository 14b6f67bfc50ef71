"""PyTorch datasets over the slice layouts (imported only when torch is needed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .bmseg import SegSlice, load_seg_slice
from .classification import ClsSlice
from .images import read_image

Sample = dict[str, object]


def image_to_tensor(image: np.ndarray, channels: int) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) to float (channels, H, W) in [0, 1] (intensities / 255, as the thesis)."""
    t = torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0)  # a writable copy
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    if t.shape[0] == channels:
        return t
    if t.shape[0] == 1:
        return t.expand(channels, -1, -1).clone()
    if channels == 1:
        return t.mean(0, keepdim=True)
    raise ValueError(f"cannot turn a {t.shape[0]}-channel image into {channels} channels")


def resize_image(t: torch.Tensor, size: int) -> torch.Tensor:
    """Area interpolation (the reference code's choice for images)."""
    if t.shape[-2:] == (size, size):
        return t
    return F.interpolate(t[None], size=(size, size), mode="area")[0]


def resize_mask(m: torch.Tensor, size: int, mode: str = "nearest") -> torch.Tensor:
    """Resize a (1, H, W) {0, 1} mask. ``nearest`` keeps shapes; ``paper`` = area then > 0, which dilates."""
    if m.shape[-2:] == (size, size):
        return m
    if mode == "nearest":
        return F.interpolate(m[None], size=(size, size), mode="nearest-exact")[0]
    if mode == "area":
        return (F.interpolate(m[None], size=(size, size), mode="area")[0] >= 0.5).float()
    if mode == "paper":
        return (F.interpolate(m[None], size=(size, size), mode="area")[0] > 0).float()
    raise ValueError(f"unknown mask resize mode '{mode}'")


class SegmentationDataset(Dataset):
    """BM-Seg slices as tensors: ``image`` (C, S, S), ``lesion`` and ``bone`` (1, S, S) in {0, 1}.

    ``transform`` receives and returns the sample dict, so geometric augmentation can move the image
    and both masks together.
    """

    def __init__(self, slices: Sequence[SegSlice], size: int = 224, channels: int = 3, threshold: int = 0,
                 mask_resize: str = "nearest", transform: Callable[[Sample], Sample] | None = None) -> None:
        self.slices = list(slices)
        self.size, self.channels, self.threshold = size, channels, threshold
        self.mask_resize, self.transform = mask_resize, transform

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> Sample:
        s = self.slices[i]
        image, lesion, bone, patient = load_seg_slice(s, self.threshold)
        img = resize_image(image_to_tensor(image, self.channels), self.size)
        les = resize_mask(torch.from_numpy(lesion).float()[None], self.size, self.mask_resize)
        bon = resize_mask(torch.from_numpy(bone if bone is not None else np.zeros_like(lesion)).float()[None],
                          self.size, self.mask_resize)
        sample: Sample = {"image": img, "lesion": les, "bone": bon, "has_bone": bone is not None,
                          "patient": patient or "", "name": s.name}
        return self.transform(sample) if self.transform else sample


class ClassificationDataset(Dataset):
    """Classification slices as ``(image (C, S, S), label)``; grey slices go in as 3 channels."""

    def __init__(self, slices: Sequence[ClsSlice], size: int = 224, channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.slices = list(slices)
        self.size, self.channels, self.transform = size, channels, transform
        self.mean = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.slices[i]
        img = resize_image(image_to_tensor(read_image(s.path), self.channels), self.size)
        if self.transform:
            img = self.transform(img)
        if self.mean is not None and self.std is not None:
            img = (img - self.mean) / self.std
        return img, s.label
