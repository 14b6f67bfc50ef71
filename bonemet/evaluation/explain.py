"""Explanations for slice classifiers: Grad-CAM for CNNs (Selvaraju et al. 2017) and attention rollout for
ViT / DeiT (Abnar & Zuidema 2020); the fusion model gets both, one per branch.

Written with forward hooks on the timm models rather than the ``grad-cam`` package, whose hard
dependency on OpenCV (with GUI libraries) is heavy for a CT toolkit that needs neither.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import model_device, resolve_device
from ..errors import BonemetError

from ..models.classifiers import FusionClassifier, SliceClassifier
from .figures import plt, save_figure


def _normalise(cam: torch.Tensor, size: int) -> np.ndarray:
    cam = cam.float().cpu()
    cam = F.interpolate(cam[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / cam.max()).numpy() if float(cam.max()) > 0 else cam.numpy()


def grad_cam(model: SliceClassifier | FusionClassifier, x: torch.Tensor, target: int = 1) -> np.ndarray:
    """Grad-CAM of class ``target`` on the CNN's last feature map, for one image (1, 3, S, S); (S, S) in [0, 1]."""
    model.eval()
    with torch.enable_grad():
        fmap = model.cnn_feature_map(x) if isinstance(model, FusionClassifier) else model.feature_map(x)
        fmap.retain_grad()
        logits = model.fuse(fmap, x) if isinstance(model, FusionClassifier) else model.head(fmap)
        logits[0, target].backward()
    weights = fmap.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * fmap).sum(1))[0].detach()
    return _normalise(cam, x.shape[-1])


def attention_rollout(vit: torch.nn.Module, x_normalised: torch.Tensor) -> np.ndarray:
    """Attention rollout from the class token to the patches of a timm ViT / DeiT; (S, S) in [0, 1]."""
    attns: list[torch.Tensor] = []
    hooks, fused = [], []
    for blk in vit.blocks:
        fused.append(blk.attn.fused_attn)
        blk.attn.fused_attn = False  # the fused kernel never materialises the attention matrix
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: attns.append(o.detach())))
    try:
        vit.eval()
        with torch.no_grad():
            vit.forward_features(x_normalised)
    finally:
        for h in hooks:
            h.remove()
        for blk, f in zip(vit.blocks, fused):
            blk.attn.fused_attn = f
    n = attns[0].shape[-1]
    rollout = torch.eye(n, device=x_normalised.device)
    for a in attns:
        a = a[0].mean(0) + torch.eye(n, device=a.device)  # heads averaged; the residual path as identity
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    prefix = getattr(vit, "num_prefix_tokens", 1)
    gh, gw = vit.patch_embed.grid_size
    cam = rollout[0, prefix:].reshape(gh, gw)
    return _normalise(cam, x_normalised.shape[-1])


def explain(model: SliceClassifier | FusionClassifier, x: torch.Tensor) -> tuple[float, list[tuple[str, np.ndarray]]]:
    """Metastasis probability and the maps for one image (1, 3, S, S) in [0, 1] (on the model's device)."""
    x = x.to(model_device(model))
    with torch.no_grad():
        prob = float(torch.softmax(model.eval()(x), 1)[0, 1])
    if isinstance(model, FusionClassifier):
        return prob, [("Grad-CAM (CNN branch)", grad_cam(model, x)),
                      ("attention rollout (ViT branch)", attention_rollout(model.vit, model.vit_norm(x)))]
    if model.kind == "transformer":
        return prob, [("attention rollout", attention_rollout(model.backbone, model.norm(x)))]
    return prob, [("Grad-CAM", grad_cam(model, x))]


def explanation_figure(images: list[tuple[str, torch.Tensor, int | None]], model, path: Path, title: str,
                       stacked: int = 1) -> Path:
    """One row per slice: the slice, then each map over it; truth and probability in the row title.

    ``stacked``: slices per input (``2 * context + 1``); the centre one is shown (mirror channels follow them)."""
    rows = []
    for name, x, label in images:
        prob, maps = explain(model, x)
        centre = x[0, :3 * stacked].unflatten(0, (stacked, 3))[stacked // 2]
        rows.append((name, centre.mean(0).numpy(), label, prob, maps))
    ncol = 1 + max(len(r[4]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.8 * ncol, 2.9 * len(rows)), squeeze=False)
    for ax_row, (name, img, label, prob, maps) in zip(axes, rows):
        truth = {None: "", 0: ", truth normal", 1: ", truth metastatic"}[label]
        ax_row[0].imshow(img, cmap="gray")
        ax_row[0].set_title(f"{name}\np(metastatic) {prob:.2f}{truth}", fontsize=7)
        for ax, (what, cam) in zip(ax_row[1:], maps):
            ax.imshow(img, cmap="gray")
            ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(what, fontsize=7)
        for ax in ax_row:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _pick_test_slices(run: Path, root: Path, n: int) -> list[tuple[Path, int]]:
    """Confident hits, the worst false alarm and the worst miss among the scored test slices."""
    import csv

    preds = run / "eval" / "predictions.csv"
    if not preds.exists():
        raise BonemetError("no predictions to pick slices from: run 'bonemet cls evaluate' first or pass --slices",
                           run)
    with open(preds, newline="") as fh:
        rows = [(float(r["probability"]), int(r["label"]), r["slice"]) for r in csv.DictReader(fh)]
    pos = sorted((r for r in rows if r[1] == 1), reverse=True)
    neg = sorted((r for r in rows if r[1] == 0), reverse=True)
    picks = pos[: max(1, n - 2)] + neg[:1] + pos[-1:]
    seen, out = set(), []
    for _, label, name in picks:
        if name not in seen:
            seen.add(name)
            out.append((root / name, label))
    return out[:n]


def explain_run(run: str | Path, slices: list[Path], n: int = 4, out: str | Path | None = None,
                device: str | None = "cpu") -> Path:
    """Explanation overlays for ``slices`` (or picked test slices) with the run's first model (on ``device``)."""
    from ..data.classification import context_paths, load_classification
    from ..data.datasets import prepare_image, stack_slices
    from ..data.images import read_image
    from ..runs.cls import cls_label, load_cls_run

    run = Path(run)
    cfg, _, models = load_cls_run(run)
    model = models[0].to(resolve_device(device))
    items = [(Path(p), None) for p in slices] if slices else _pick_test_slices(run, Path(cfg.data), n)
    neighbours: dict[Path, list[Path]] = {}
    if cfg.context:  # the stacked neighbours come from the patient's slices in the run's data root
        index = load_classification(cfg.data)
        neighbours = {s.path.resolve(): ps for s, ps in zip(index.slices, context_paths(index.slices, cfg.context))}
    images = []
    for path, label in items:
        paths = neighbours.get(path.resolve()) if cfg.context else [path]
        if paths is None:
            raise BonemetError(f"not a slice of the run's data root {cfg.data}: a --context run takes its "
                               "neighbouring slices from there", path)
        x = prepare_image(stack_slices([read_image(p) for p in paths], 3, path), model.input_size, cfg.crop,
                          cfg.mirror)[None]
        images.append((path.name, x, label))
    path = Path(out) if out else run / "eval" / "explain.png"
    return explanation_figure(images, model, path, f"{cls_label(cfg)}: why it decided", 2 * cfg.context + 1)
