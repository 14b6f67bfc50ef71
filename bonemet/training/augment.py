"""Geometric augmentation applied identically to an image and its masks (the thesis' segmentation augmentation),
and, as options, a random zoom (patients of other sizes), domain randomisation of the image's intensities
(scanner, dose and kernel differences) and of its bone density (patients whose normal bone is denser or thinner).

The reference code passed its masks under names its augmentation library ignored, so its masks
were never rotated or flipped with their images; here image, lesion and bone move together, except
under ``--protocol paper``, which reproduces the reference run (``masks_follow=False``).
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

MASK_KEYS = ("lesion", "bone", "truth")  # truth: a distilled student's true lesion mask beside its soft one


# domain randomisation of windowed images in [0, 1] (the bone window spans 1800 HU: 0.05 is 90 HU)
CONTRAST = (0.85, 1.15)  # HU scale about the window's middle
OFFSET = 0.05  # HU offset, either way
NOISE = 0.04  # largest standard deviation of added Gaussian noise
P_BLUR, BLUR_SIGMA = 0.3, (0.5, 1.2)  # a softer reconstruction kernel or thicker slices
P_SHARPEN, SHARPEN = 0.2, (0.3, 1.0)  # a sharper kernel (unsharp mask of this strength)
DENSITY_PIVOT_HU = 100.0  # bone density randomisation scales what lies above this HU (marrow, cortex), not soft tissue


def density_pivots(window: str, channels: int) -> list[float] | None:
    """Where ``DENSITY_PIVOT_HU`` falls in each of the ``channels`` input channels of images in ``window`` (a preset
    of ``data.windows``, the same in every channel; ``multi``: one window per channel); None for any other window
    (images whose HU mapping is not known)."""
    from ..data.windows import MULTI, PRESETS

    names = list(MULTI) if window == "multi" and channels == len(MULTI) else [window] * channels
    if not all(n in PRESETS for n in names):
        return None
    return [float(PRESETS[n](DENSITY_PIVOT_HU)) for n in names]


class SegAugment:
    """Rotation up to ``degrees`` (every sample, zero border), horizontal flip p=0.5, vertical flip p=0.1;
    with ``scale`` S > 0 also a zoom by a factor drawn log-uniformly from [1/(1+S), 1+S] (image and masks, with the
    rotation); with ``intensity`` also a random contrast and offset, Gaussian noise, and blur or sharpening of the
    image (never of the masks), each drawn per sample; with ``density`` D > 0 first what lies above
    ``DENSITY_PIVOT_HU`` (at ``pivots``, one per image channel: ``density_pivots``) scaled about it by a factor drawn
    log-uniformly from [1/(1+D), 1+D], so that normal bone, and a lesion with it, becomes denser or thinner while
    soft tissue stays as it is.

    Its draws come from ``generator``, which the training loader seeds for every item (``loop.SeededItems``)."""

    def __init__(self, degrees: float = 35.0, p_rotate: float = 1.0, p_hflip: float = 0.5, p_vflip: float = 0.1,
                 generator: torch.Generator | None = None, masks_follow: bool = True, intensity: bool = False,
                 scale: float = 0.0, density: float = 0.0, pivots: list[float] | None = None) -> None:
        self.degrees, self.p_rotate, self.p_hflip, self.p_vflip = degrees, p_rotate, p_hflip, p_vflip
        self.generator = generator
        self.mask_keys = MASK_KEYS if masks_follow else ()  # the reference code's masks stayed where they were
        self.intensity = intensity
        self.scale = scale
        if density and not pivots:
            raise ValueError("bone density randomisation needs the pivot of each image channel")
        self.density, self.pivots = density, pivots

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self._rand()

    def _intensity(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (C, H, W; its channels are one slice or its neighbours, all changed alike)."""
        scale, offset = self._uniform(*CONTRAST), self._uniform(-OFFSET, OFFSET)
        x = (image - 0.5) * scale + 0.5 + offset
        r = self._rand()
        if r < P_BLUR:
            sigma = self._uniform(*BLUR_SIGMA)
            x = TF.gaussian_blur(x, [2 * round(2 * sigma) + 1] * 2, [sigma, sigma])
        elif r < P_BLUR + P_SHARPEN:
            x = x - self._uniform(*SHARPEN) * (TF.gaussian_blur(x, [5, 5], [1.0, 1.0]) - x)
        sd = self._uniform(0.0, NOISE)
        x = x + sd * torch.randn(x.shape[-2:], generator=self.generator, dtype=x.dtype)
        return x.clamp(0.0, 1.0)

    def _density(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (C, H, W) with what lies above each channel's pivot scaled about it by one drawn factor."""
        k = self._factor(self.density)
        p = torch.tensor(self.pivots, dtype=image.dtype).view(-1, 1, 1)
        return torch.where(image > p, p + (image - p) * k, image).clamp(0.0, 1.0)

    def _factor(self, span: float) -> float:
        """A factor drawn log-uniformly from [1/(1+span), 1+span]."""
        return math.exp(self._uniform(-1.0, 1.0) * math.log1p(span))

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        if self.density:
            out["image"] = self._density(out["image"])
        if self.intensity:
            out["image"] = self._intensity(out["image"])
        angle = (self._rand() * 2 - 1) * self.degrees if self.degrees and self._rand() < self.p_rotate else None
        if self.scale:
            zoom = self._factor(self.scale)
            for k in ("image", *self.mask_keys):
                if k in out:
                    out[k] = TF.affine(out[k], angle or 0.0, [0, 0], zoom, [0.0, 0.0], fill=0.0,
                                       interpolation=InterpolationMode.BILINEAR if k == "image" else
                                       InterpolationMode.NEAREST)
        elif angle is not None:
            out["image"] = TF.rotate(out["image"], angle, InterpolationMode.BILINEAR, fill=0.0)
            for k in self.mask_keys:
                if k in out:
                    out[k] = TF.rotate(out[k], angle, InterpolationMode.NEAREST, fill=0.0)
        for p, flip in ((self.p_hflip, TF.horizontal_flip), (self.p_vflip, TF.vertical_flip)):
            if self._rand() < p:
                for k in ("image", *self.mask_keys):
                    if k in out:
                        out[k] = flip(out[k])
        return out

