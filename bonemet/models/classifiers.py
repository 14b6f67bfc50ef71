"""Slice classifiers (the thesis' chapter 5): timm backbones and the ResNeXt-50 + ViT-Tiny fusion.

Every classifier takes 3-channel images (3 per slice with stacked neighbours) in [0, 1] at its own
input size and normalises them itself with its timm configuration (mean / std), so the preprocessing
travels with the weights and is reapplied at prediction time. Outputs are two logits: {normal, metastatic}.

Nothing is downloaded: pretrained weights come from local files (``load_pretrained``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import BonemetError
from .small_cnn import SMALL_CNNS  # importing it registers them with timm
from .weights import weight_mismatch

THESIS_BACKBONES = ("resnext50_32x4d", "densenet201", "efficientnet_b0", "inception_v3",
                    "vit_tiny_patch16_224", "vit_small_patch16_224", "deit_tiny_patch16_224", "deit_small_patch16_224")
EXTRA_BACKBONES = ("densenet161", "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224",
                   *SMALL_CNNS)
FUSION = "fusion"
FUSION_BRANCHES = ("resnext50_32x4d", "vit_tiny_patch16_224")


def classifier_names() -> list[str]:
    """The offered classifiers (any other timm model name is accepted too)."""
    return [*THESIS_BACKBONES, *EXTRA_BACKBONES, FUSION]


def family(name: str) -> str:
    """``transformer`` for ViT / DeiT (attention maps, the transformer schedule), ``cnn`` otherwise."""
    if name == FUSION:
        return "fusion"
    return "transformer" if name.startswith(("vit_", "deit_")) else "cnn"


def _timm_model(name: str, num_classes: int, img_size: int | None, global_pool: str | None = None,
                in_chans: int = 3) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise BonemetError(f"unknown classifier '{name}' (choose from {', '.join(classifier_names())} "
                           "or another timm model name)")
    kwargs: dict = {"img_size": img_size} if img_size and family(name) == "transformer" else {}
    if global_pool:
        if family(name) == "transformer":
            raise BonemetError(f"--global-pool applies to CNNs, not to {name}")
        kwargs["global_pool"] = global_pool
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


class _Normalise(nn.Module):
    """The backbone's own normalisation (timm data config), applied inside the model.

    With ``in_chans`` = 3k (k stacked slices, ``--context``) each slice gets the 3-channel mean / std.
    With ``mirror`` the second half of the channels are left-right differences (``--mirror``): already
    centred on 0, they are only scaled.
    """

    def __init__(self, backbone: nn.Module, in_chans: int = 3, mirror: bool = False) -> None:
        super().__init__()
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=backbone)
        mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
        reps = in_chans // len(mean)
        mean = mean.repeat(reps)
        if mirror:
            mean[in_chans // 2:] = 0.0
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.repeat(reps).view(1, -1, 1, 1), persistent=False)
        self.input_size = int(cfg["input_size"][-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SliceClassifier(nn.Module):
    """One timm backbone with a 2-class head."""

    def __init__(self, name: str, num_classes: int = 2, img_size: int | None = None,
                 global_pool: str | None = None, in_chans: int = 3, mirror: bool = False) -> None:
        super().__init__()
        self.name, self.kind = name, family(name)
        self.backbone = _timm_model(name, num_classes, img_size, global_pool, in_chans)
        self.norm = _Normalise(self.backbone, in_chans, mirror)
        self.input_size = img_size or self.norm.input_size
        self.backbones = {name: self.backbone}

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (CNN: (B, C, h, w); transformer: tokens)."""
        return self.backbone.forward_features(self.norm(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_map(x))


class FusionClassifier(nn.Module):
    """ResNeXt-50 pooled features (2048) + ViT-Tiny class token (192) -> one linear layer (the thesis' fusion).

    The thesis' equations concatenate feature maps before pooling, which cannot work for a 7x7 grid and
    197 tokens, so each branch is pooled first. ``cnn`` / ``vit`` swap the branches (tests use tiny ones).
    """

    def __init__(self, num_classes: int = 2, img_size: int | None = None, cnn: str = FUSION_BRANCHES[0],
                 vit: str = FUSION_BRANCHES[1], in_chans: int = 3, mirror: bool = False) -> None:
        super().__init__()
        self.name, self.kind = FUSION, "fusion"
        self.cnn, self.vit = (_timm_model(cnn, 0, img_size, in_chans=in_chans),
                              _timm_model(vit, 0, img_size, in_chans=in_chans))
        self.cnn_norm, self.vit_norm = _Normalise(self.cnn, in_chans, mirror), _Normalise(self.vit, in_chans, mirror)
        self.input_size = img_size or max(self.cnn_norm.input_size, self.vit_norm.input_size)
        self.fc = nn.Linear(self.cnn.num_features + self.vit.num_features, num_classes)
        self.backbones = {cnn: self.cnn, vit: self.vit}

    def cnn_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn.forward_features(self.cnn_norm(x))

    def fuse(self, cnn_map: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits from the CNN's feature map (kept for Grad-CAM) and the image (ViT branch)."""
        cnn_feat = self.cnn.forward_head(cnn_map, pre_logits=True)
        vit_feat = self.vit.forward_head(self.vit.forward_features(self.vit_norm(x)), pre_logits=True)
        return self.fc(torch.cat([cnn_feat, vit_feat], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.cnn_feature_map(x), x)


def create_classifier(name: str, img_size: int | None = None, global_pool: str | None = None, in_chans: int = 3,
                      mirror: bool = False, **opts) -> nn.Module:
    """``create_classifier("vit_tiny_patch16_224")``, ``create_classifier("fusion")``; 2 output logits.

    ``global_pool`` (CNNs: ``avg`` by default, or ``max``, which suits small findings in a large slice).
    ``in_chans``: 3 per input slice (9 for one neighbour on each side, ``--context 1``), twice that with
    ``mirror`` (left-right difference channels after the image channels, ``--mirror``).
    """
    if in_chans % 3:
        raise BonemetError(f"in_chans must be a multiple of 3 (3 per slice), got {in_chans}")
    if name == FUSION:
        return FusionClassifier(img_size=img_size, in_chans=in_chans, mirror=mirror, **opts)
    return SliceClassifier(name, img_size=img_size, global_pool=global_pool, in_chans=in_chans, mirror=mirror)


def backbone_modules(model: nn.Module) -> list[nn.Module]:
    """The pretrained-able parts (what ``--freeze-backbone`` freezes): everything but the new head."""
    if isinstance(model, FusionClassifier):
        return [model.cnn, model.vit]
    head = model.backbone.get_classifier()
    heads = head if isinstance(head, tuple) else (head,)  # distilled DeiT has two heads
    head_params = {id(p) for h in heads for p in h.parameters()}
    return [m for m in model.backbone.children() if not any(id(p) in head_params for p in m.parameters())]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise BonemetError("pretrained weights not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BonemetError(f"not a readable state dict ({type(exc).__name__}: {exc})", path) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BonemetError("not a state dict (expected a mapping of parameter names to tensors)", path)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_pretrained(backbone: nn.Module, path: str | Path) -> str:
    """Load a timm-compatible state dict into ``backbone``; returns what was done, in words.

    The classifier head is re-initialised when the file's head does not fit (e.g. 1000 ImageNet classes);
    a ViT position embedding for another grid is resampled. Any other missing or mismatched
    tensor is an error naming the file. A 3-channel first convolution is spread over a model with more
    input channels (stacked slices) by timm's ``adapt_input_conv`` (repeated, scaled by 3 / channels).
    """
    path = Path(path)
    sd = _read_state_dict(path)
    own = backbone.state_dict()
    first = f"{backbone.pretrained_cfg.get('first_conv', '')}.weight"
    adapted = first in sd and first in own and sd[first].ndim == 4 and sd[first].shape[1] != own[first].shape[1]
    if adapted:
        from timm.models import adapt_input_conv

        sd[first] = adapt_input_conv(own[first].shape[1], sd[first])
    heads = backbone.pretrained_cfg.get("classifier", ())
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    is_head = lambda k: any(k == h or k.startswith(h + ".") for h in heads)  # noqa: E731
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], list(backbone.patch_embed.grid_size),
                                                 num_prefix_tokens=getattr(backbone, "num_prefix_tokens", 1))
    dropped = [k for k in sd if is_head(k) and (k not in own or sd[k].shape != own[k].shape)]
    for k in dropped:
        del sd[k]
    what = weight_mismatch(sd, own, optional=lambda k: is_head(k) and bool(dropped))
    if what:
        name = backbone.pretrained_cfg.get("architecture", type(backbone).__name__)
        raise BonemetError(f"weights do not fit {name}: {what}", path)
    backbone.load_state_dict(sd, strict=False)
    note = f"loaded {path.name}"
    if adapted:
        note += f" (first convolution spread over {own[first].shape[1]} input channels)"
    if dropped:
        note += " (its classifier head does not fit 2 classes: head re-initialised)"
    return note


def apply_pretrained(model: nn.Module, paths: Sequence[str | Path] | None) -> list[str]:
    """Load one file per backbone (two for the fusion: CNN then ViT); returns notes for the run's log."""
    names = list(model.backbones)
    if not paths:
        return [f"{n}: random weights (no --pretrained file given; nothing is downloaded)" for n in names]
    if len(paths) != len(names):
        raise BonemetError(f"{model.name} needs {len(names)} --pretrained file(s) ({', '.join(names)}), "
                           f"got {len(paths)}")
    return [f"{n}: {load_pretrained(b, p)}" for (n, b), p in zip(model.backbones.items(), paths)]
