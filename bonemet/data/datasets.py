"""PyTorch datasets over the slice layouts (imported only when torch is needed)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError
from .bmseg import SegSlice, load_seg_slice
from .classification import ClsSlice, context_paths
from .images import read_image, read_mask
from .physical import BODY_THRESHOLD, body_box, context_neighbours, context_step, cut, physical_field

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


CROPS = ("none", "body")


def crop_body(t: torch.Tensor, threshold: float = BODY_THRESHOLD) -> torch.Tensor:
    """The smallest square around the body (pixels above ``threshold`` in any channel), centred on it.

    Small findings then fill more of the model's input than in the whole field of view. Where the
    square passes the image edge it is zero-padded (air), so the body is never stretched; a slice
    without body comes back whole.
    """
    box = body_box(t, threshold)
    if box is None:
        return t
    r0, r1, c0, c1 = box
    side = max(r1 - r0, c1 - c0)
    return cut(t, (r0 + r1 - side) // 2, (c0 + c1 - side) // 2, side, side)


def add_mirror(t: torch.Tensor) -> torch.Tensor:
    """(C, H, W) in [0, 1] -> (2C, H, W): the image, then its left-right asymmetry ``t - hflip(t)`` in [-1, 1]
    (0 where the slice is symmetric about its vertical midline, and in zero padding).

    The skeleton is nearly symmetric, so a lesion on one side shows as a patch of asymmetry that the other
    side's healthy bone does not cancel. Computed before augmentation, so a rotation turns the image and
    its asymmetry together; on a body crop the midline is the body's.
    """
    return torch.cat([t, t - t.flip(-1)])


def prepare_image(t: torch.Tensor, size: int, crop: str = "none", mirror: bool = False) -> torch.Tensor:
    """A classifier's input from a (C, H, W) image in [0, 1]: optional body crop (``CROPS``), then resize;
    ``mirror`` appends the left-right asymmetry channels (``add_mirror``)."""
    if crop not in CROPS:
        raise ValueError(f"unknown crop '{crop}' (choose from {', '.join(CROPS)})")
    t = resize_image(crop_body(t) if crop == "body" else t, size)
    return add_mirror(t) if mirror else t


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


SLICE_STEM = re.compile(r"^(?P<series>.+)_s(?P<k>\d+)$")  # data.export.slice_name: PATIENT_sNNNN


def context_files(slices: Sequence[SegSlice], context_mm: float) -> list[tuple[Path, Path, Path]]:
    """For each slice, the image files of its neighbours about ``context_mm`` below and above and its own, found
    in its image folder by the name ``data.export`` gives slice k of a series (``PATIENT_sNNNN``, a merge's
    prefix kept), at the slice spacing of ``patients.csv``'s column ``slice_mm``."""
    series: dict[tuple[Path, str, str], dict[int, Path]] = defaultdict(dict)
    for folder in {s.image.parent for s in slices}:
        for p in folder.iterdir():
            m = SLICE_STEM.match(p.stem)
            if m:
                series[folder, m["series"], p.suffix][int(m["k"])] = p
    out = []
    for s in slices:
        m = SLICE_STEM.match(s.image.stem)
        if m is None or s.slice_mm is None:
            raise DataError("neighbouring slices as context need slices named PATIENT_sNNNN with their slice "
                            "spacing in patients.csv's column slice_mm (bonemet data convert and data synth write "
                            "both)", s.image)
        files = series[s.image.parent, m["series"], s.image.suffix]
        below, k, above = context_neighbours(int(m["k"]), sorted(files), context_step(context_mm, s.slice_mm))
        out.append((files[below], files[k], files[above]))
    return out


UNKNOWN_BONE_TARGET = 0.5  # a partial bone label's unknown pixels in a sample's ``bone`` (training leaves them out)


class SegmentationDataset(Dataset):
    """BM-Seg slices as tensors: ``image`` (C, S, S), ``lesion`` and ``bone`` (1, S, S) in {0, 1}; a partial bone
    label (``bone_partial``) also holds ``UNKNOWN_BONE_TARGET`` where it does not know.

    ``transform`` receives and returns the sample dict, so geometric augmentation can move the image
    and both masks together. ``pixel_mm``: physical scale (``data.physical``): each slice resampled to pixels of
    that size (its own spacing from ``patients.csv``) and the S x S field centred on the body cut out, instead
    of the whole slice resized to S x S (the thesis). ``context_mm``: the image is the slice about that far below,
    the slice and the slice as far above, one grey channel each (``stack_slices``), the masks the slice's.
    """

    def __init__(self, slices: Sequence[SegSlice], size: int = 224, channels: int = 3, threshold: int = 0,
                 mask_resize: str = "nearest", transform: Callable[[Sample], Sample] | None = None,
                 pixel_mm: float | None = None, context_mm: float = 0.0) -> None:
        self.slices = list(slices)
        self.context = context_files(self.slices, context_mm) if context_mm and self.slices else None
        self.size, self.channels, self.threshold = size, channels, threshold
        self.mask_resize, self.transform, self.pixel_mm = mask_resize, transform, pixel_mm
        if pixel_mm is not None:
            missing = next((s for s in self.slices if s.pixel_mm is None), None)
            if missing is not None:
                raise DataError("no pixel spacing for this slice, which physical scale (--pixel-mm) needs: "
                                "patients.csv with columns row_mm,col_mm (bonemet data convert and data synth "
                                "write them)", missing.image)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> Sample:
        s = self.slices[i]
        image, lesion, bone, patient = load_seg_slice(s, self.threshold, unknown_bone=UNKNOWN_BONE_TARGET)
        if self.context is None:
            img = image_to_tensor(image, self.channels)
        else:
            below, _, above = self.context[i]
            img = stack_slices([read_image(below), image, read_image(above)], 1, s.image)
        les = torch.from_numpy(lesion).float()[None]
        bon = torch.from_numpy(bone if bone is not None else np.zeros_like(lesion)).float()[None]
        partial = bone is not None and s.bone_partial
        if self.pixel_mm is None:
            img = resize_image(img, self.size)
            les = resize_mask(les, self.size, self.mask_resize)
            bon = resize_mask(bon, self.size, "nearest" if partial else self.mask_resize)  # keeps the unknown
        else:
            img, (les, bon) = physical_field(img, s.pixel_mm, self.pixel_mm, self.size, (les, bon))
        sample: Sample = {"image": img, "lesion": les, "bone": bon, "has_bone": bone is not None,
                          "bone_partial": partial, "patient": patient or "", "name": s.name}
        return self.transform(sample) if self.transform else sample


class ClassificationDataset(Dataset):
    """Classification slices as ``(image (C, S, S), label)``; grey slices go in as 3 channels.

    With ``masks`` (one lesion-mask file per slice) items are ``(image, label, mask (1, S, S))``: the mask
    is cropped, resized (area: a lesion's share of each pixel) and augmented together with the image.
    ``crop="body"`` crops each slice to the body's bounding square before resizing (``prepare_image``).
    ``context=N`` stacks the N slices above and below each slice as extra channels (2.5D input,
    ``3 * (2N + 1)`` channels, centre slice in the middle); neighbours are found among ``slices``
    (``context_paths``), so give whole patients. ``mirror`` then doubles the channels with their
    left-right asymmetry (``add_mirror``).
    """

    def __init__(self, slices: Sequence[ClsSlice], size: int = 224, channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, crop: str = "none",
                 context: int = 0, masks: Sequence[Path] | None = None, mirror: bool = False) -> None:
        self.slices = list(slices)
        self.mirror = mirror
        self.masks = None if masks is None else list(masks)
        self.size, self.channels, self.transform, self.crop = size, channels, transform, crop
        self.paths = context_paths(self.slices, context)
        self.mean = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> tuple:
        paths = self.paths[i]
        img = stack_slices([read_image(p) for p in paths], self.channels, paths[len(paths) // 2])
        if self.masks is not None:
            mask = torch.from_numpy(read_mask(self.masks[i])).float()[None]
            if mask.shape[-2:] != img.shape[-2:]:
                raise DataError(f"lesion mask {tuple(mask.shape[-2:])} and slice {tuple(img.shape[-2:])} differ in "
                                f"size", self.masks[i])
            # one tensor, so that crop, resize and augmentation move image and mask together (a lesion lies
            # inside the body, so the mask channel never changes the body square)
            img = torch.cat([img, mask])
        img = prepare_image(img, self.size, self.crop)
        if self.mirror:  # of the image channels only, not of a mask riding along
            n = len(img) - (self.masks is not None)
            img = torch.cat([add_mirror(img[:n]), img[n:]])
        if self.transform:
            img = self.transform(img)
        img, mask = (img[:-1], img[-1:]) if self.masks is not None else (img, None)
        if self.mean is not None and self.std is not None:
            img = (img - self.mean) / self.std
        return (img, self.slices[i].label) if mask is None else (img, self.slices[i].label, mask)


def stack_slices(images: Sequence[np.ndarray], channels: int, where: str | Path | None = None) -> torch.Tensor:
    """Neighbouring slices (uint8 images) as one (len(images) * channels, H, W) tensor in [0, 1].

    ``where`` (the centre slice's file, or the scan) names the input in the error for unequal sizes.
    """
    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        raise DataError(f"its neighbouring slices differ in size {sorted(shapes)}: --context needs one size "
                        "per patient", where)
    return torch.cat([image_to_tensor(im, channels) for im in images])
