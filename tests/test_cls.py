"""Classification: every backbone and the fusion train a step, focal loss, local pretrained weights,
patient-level splits and the train / evaluate / compare / explain commands."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bonemet.errors import BonemetError
from bonemet.models.classifiers import (FusionClassifier, apply_pretrained, classifier_names, create_classifier,
                                        load_pretrained)
from bonemet.training.losses import focal_loss
from conftest import invoke


@pytest.mark.parametrize("name", classifier_names())
def test_every_classifier_trains_a_step_at_its_input_size(name: str) -> None:
    torch.manual_seed(0)
    model = create_classifier(name)
    expected = {"inception_v3": 299, "small_cnn16": 192, "small_cnn32": 192}.get(name, 224)
    assert model.input_size == expected
    x = torch.rand(2, 3, expected, expected)
    logits = model.train()(x)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    focal_loss(logits, torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_small_cnn_is_a_timm_model_with_max_pooling_and_its_own_normalisation() -> None:
    import timm

    model = create_classifier("small_cnn16")
    assert timm.is_model("small_cnn16") and model.backbone.num_features == 128
    assert sum(p.numel() for p in model.parameters()) == 294_258
    assert model.backbone.head.global_pool.pool_type == "max"
    assert model.norm.mean.flatten().tolist() == [0.5] * 3 and model.norm.std.flatten().tolist() == [0.25] * 3
    x = torch.zeros(1, 3, 96, 96)
    assert model.feature_map(x).shape == (1, 128, 12, 12)  # 8x downsampling only
    x[..., 40, 40] = 1.0  # max pooling: one bright pixel anywhere moves the logits
    assert not torch.allclose(model.eval()(x), model(torch.zeros(1, 3, 96, 96)))
    assert create_classifier("small_cnn16", global_pool="avg").backbone.head.global_pool.pool_type == "avg"


def test_body_crop_is_a_padded_square_around_the_body() -> None:
    from bonemet.data.datasets import crop_body, prepare_image

    t = torch.zeros(3, 100, 120)
    t[:, 10:30, 0:60] = 0.5  # a 20 x 60 body touching the left edge
    c = crop_body(t)
    assert c.shape == (3, 60, 60)
    assert float(c.sum()) == pytest.approx(float(t.sum()))  # the whole body, nothing stretched
    assert torch.equal(c[:, 20:40, :], t[:, 10:30, 0:60])  # centred vertically, zero-padded above and below
    assert float(c[:, :20].abs().sum()) == 0 and float(c[:, 40:].abs().sum()) == 0
    assert torch.equal(crop_body(torch.zeros(3, 50, 50)), torch.zeros(3, 50, 50))  # no body: whole slice
    assert prepare_image(t, 32, "body").shape == (3, 32, 32)
    with pytest.raises(ValueError, match="unknown crop"):
        prepare_image(t, 32, "lungs")


def test_fusion_concatenates_pooled_branch_features() -> None:
    model = FusionClassifier()
    assert model.fc.in_features == 2048 + 192  # ResNeXt-50 pooled + ViT-Tiny class token (the thesis' fusion)


def test_focal_loss_matches_hand_value_and_torchvision() -> None:
    from torchvision.ops import sigmoid_focal_loss

    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-0.5, 1.5]])
    target = torch.tensor([1, 1, 0])
    # hand: p_t = softmax[target]; FL = -alpha_t (1 - p_t)^2 log p_t with alpha 0.8 for class 1, 0.2 for class 0
    hand = []
    for (a, b), t in zip(logits.tolist(), target.tolist()):
        p1 = math.exp(b) / (math.exp(a) + math.exp(b))
        pt, at = (p1, 0.8) if t == 1 else (1 - p1, 0.2)
        hand.append(-at * (1 - pt) ** 2 * math.log(pt))
    ours = focal_loss(logits, target, alpha=0.8, gamma=2.0, reduction="none")
    assert torch.allclose(ours, torch.tensor(hand), atol=1e-6)
    tv = sigmoid_focal_loss(logits[:, 1] - logits[:, 0], target.float(), alpha=0.8, gamma=2.0, reduction="none")
    assert torch.allclose(ours, tv, atol=1e-6)
    assert abs(float(focal_loss(logits, target)) - sum(hand) / 3) < 1e-6


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_reproduces_logits(tmp_path, suffix: str) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = create_classifier("vit_tiny_patch16_224", img_size=64).eval()
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in src.backbone.state_dict().items()}
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": sd}, path)
    torch.manual_seed(2)
    dst = create_classifier("vit_tiny_patch16_224", img_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    assert not torch.allclose(src(x), dst(x))
    notes = apply_pretrained(dst, [path])
    assert "loaded" in notes[0]
    with torch.no_grad():
        assert torch.allclose(src(x), dst(x), atol=1e-6)


def test_pretrained_imagenet_head_is_reinitialised_and_random_start_is_said(tmp_path) -> None:
    import timm

    imagenet = timm.create_model("efficientnet_b0", num_classes=1000)
    path = tmp_path / "imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_classifier("efficientnet_b0")
    note = load_pretrained(model.backbone, path)
    assert "head re-initialised" in note
    assert torch.equal(model.backbone.conv_stem.weight, imagenet.conv_stem.weight)
    assert "random weights" in apply_pretrained(create_classifier("efficientnet_b0"), None)[0]


def test_mismatched_or_missing_weights_are_one_clear_error(tmp_path) -> None:
    import timm

    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(BonemetError, match="do not fit"):
        load_pretrained(create_classifier("efficientnet_b0").backbone, path)
    with pytest.raises(BonemetError, match="not found"):
        load_pretrained(create_classifier("efficientnet_b0").backbone, tmp_path / "nope.pth")
    with pytest.raises(BonemetError, match="2 --pretrained"):
        apply_pretrained(FusionClassifier(cnn="resnet18", vit="vit_tiny_patch16_224", img_size=64), [path])


def test_cli_bad_pretrained_file_one_line(phantom, tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    r = invoke("cls", "train", "--data", phantom / "classification", "--model", "efficientnet_b0",
               "--pretrained", bad, "--epochs", "1", "--out", tmp_path / "run")
    assert r.returncode == 2
    assert "bad.pth" in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error")]) == 1
    assert not (tmp_path / "run" / "fold0").exists()


def test_cls_train_evaluate_compare_explain(phantom, tmp_path) -> None:
    data = phantom / "classification"
    run = tmp_path / "run"
    r = invoke("cls", "train", "--data", data, "--model", "resnet18", "--size", "64", "--epochs", "2",
               "--test-patients", "0.5", "--select", "best", "--out", run)
    assert r.returncode == 0, r.stderr
    assert "random weights" in r.stderr
    split = json.loads((run / "splits.json").read_text())
    test = set(split["test_patients"])
    assert len(test) == 2
    for fold in split["folds"]:  # no patient in both train and test
        assert not test & set(fold["train_patients"])
        assert not test & set(fold.get("inner_val_patients", []))
    statuses = {row["patient"]: row["status"] for row in csv.DictReader(open(phantom / "patients.csv"))}
    assert {statuses[p] for p in test} == {"metastatic", "healthy"}  # stratified by patient status
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preprocessing"]["input_size"] == 64 and "random weights" in cfg["weights"][0]
    assert (run / "fold0" / "best.pt").exists() and (run / "fold0" / "last.pt").exists()

    r = invoke("cls", "evaluate", run, "--patient-rule", "count:2")
    assert r.returncode == 0, r.stderr
    ev = run / "eval"
    for f in ("table.md", "table.csv", "patients.csv", "predictions.csv", "confusion.png", "roc.png", "metrics.json"):
        assert (ev / f).stat().st_size > 0, f
    m = json.loads((ev / "metrics.json").read_text())
    with open(ev / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert {p["patient"] for p in preds} == test and m["patients"] == 2
    from sklearn.metrics import roc_auc_score  # the slice ROC-AUC of the written predictions, recomputed

    auc = roc_auc_score([int(p["label"]) for p in preds], [float(p["probability"]) for p in preds])
    assert m["slice"]["ROC-AUC"] == pytest.approx(auc, abs=1e-6)
    assert "Table 5.1" in (ev / "table.md").read_text()

    r = invoke("cls", "compare", run, run, "--out", tmp_path / "cmp")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cmp" / "compare.md").read_text().count("| resnet18 |") == 2
    assert (tmp_path / "cmp" / "roc.png").exists() and (tmp_path / "cmp" / "recall.png").exists()
    assert "recall.png" in r.stdout

    r = invoke("cls", "explain", run, "--n", "3")
    assert r.returncode == 0, r.stderr
    assert (ev / "explain.png").stat().st_size > 0
    r = invoke("cls", "evaluate", run, "--patient-rule", "most:3")
    assert r.returncode == 2 and "most:3" in r.stderr


def test_body_crop_and_weight_decay_travel_with_the_run(phantom, tmp_path) -> None:
    """A run trained with --crop body is evaluated on body crops too (its predictions are the model's on crops)."""
    from bonemet.data.datasets import image_to_tensor, prepare_image
    from bonemet.data.images import read_image
    from bonemet.inference.runners import ClsRunner
    from bonemet.inference.scan import read_scan
    from bonemet.runs.cls import load_cls_run

    data = phantom / "classification"
    run = tmp_path / "run"
    r = invoke("cls", "train", "--data", data, "--model", "small_cnn16", "--size", "64", "--epochs", "1",
               "--crop", "body", "--optimizer", "adamw", "--weight-decay", "1e-4", "--alpha", "0.5", "--gamma", "0",
               "--bf16", "--test-patients", "0.5", "--out", run)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["crop"] == "body" and cfg["weight_decay"] == 1e-4 and cfg["preprocessing"]["crop"].startswith("body")
    assert cfg["bf16"] is True  # trained in bf16; evaluated below in fp32 from the same checkpoint
    assert invoke("cls", "evaluate", run).returncode == 0
    with open(run / "eval" / "predictions.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    _, _, (model,) = load_cls_run(run)
    img = image_to_tensor(read_image(data / row["slice"]), 3)

    @torch.no_grad()
    def logits(crop: str) -> torch.Tensor:
        return model(prepare_image(img, 64, crop)[None])[0]

    def prob(crop: str) -> float:
        return float(torch.softmax(logits(crop), 0)[1])

    assert prob("body") == pytest.approx(float(row["probability"]), abs=1e-5)
    # the crop changes the model's input, hence its logits (a one-epoch model's probabilities can both sit at 0)
    assert float((logits("none") - logits("body")).abs().max()) > 1e-3
    scan = read_scan((data / row["slice"]).parent)  # predict's classifier crops the same way
    k = [p.name for p in scan.images].index(Path(row["slice"]).name)
    assert ClsRunner(run).predict(scan)[k] == pytest.approx(prob("body"), abs=1e-5)
    r = invoke("cls", "train", "--data", data, "--model", "small_cnn16", "--crop", "lungs", "--out", tmp_path / "r2")
    assert r.returncode == 2 and "unknown crop 'lungs'" in r.stderr and "Traceback" not in r.stderr


def test_bf16_training_step_follows_the_fp32_gradient() -> None:
    """--bf16 trains in bfloat16 autocast + channels_last: the gradient points where the fp32 one does."""
    from bonemet.training.loop import training_precision

    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 64, 64), torch.tensor([0, 1] * 4)
    grads = {}
    for bf16 in (False, True):
        torch.manual_seed(1)
        model = create_classifier("small_cnn16")
        with training_precision(model, bf16):
            logits = model(x)
        assert logits.dtype == (torch.bfloat16 if bf16 else torch.float32)
        focal_loss(logits.float(), y, 0.5, 0.0).backward()
        grads[bf16] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    cosine = torch.nn.functional.cosine_similarity(grads[False], grads[True], dim=0)
    # not 0.99: bf16 rounding moves the global max of some channels to another pixel (0.93-0.97 per layer)
    assert cosine > 0.9, float(cosine)


def test_attention_rollout_and_gradcam_shapes() -> None:
    from bonemet.evaluation.explain import explain

    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    for model in (create_classifier("deit_tiny_distilled_patch16_224", img_size=64), create_classifier("resnet18"),
                  create_classifier("small_cnn16"),
                  FusionClassifier(cnn="resnet18", vit="vit_tiny_patch16_224", img_size=64)):
        prob, maps = explain(model, x)
        assert 0 <= prob <= 1 and maps
        for _, cam in maps:
            assert cam.shape == (64, 64) and cam.min() >= 0 and cam.max() <= 1 + 1e-6 and cam.max() > 0


def test_context_neighbours_follow_file_name_order_within_each_patient(tmp_path) -> None:
    from bonemet.data.classification import ClsSlice, context_paths

    def sl(sub: str, name: str, patient: str = "P") -> ClsSlice:
        return ClsSlice(tmp_path / patient / sub / name, int(sub == "metastatic"), patient, 1)

    slices = [sl("normal", "s1.png"), sl("normal", "s10.png"), sl("metastatic", "s2.png"), sl("metastatic", "s9.png"),
              sl("normal", "s5.png", "Q")]
    got = {(s.patient, s.path.name): [p.name for p in ps] for s, ps in zip(slices, context_paths(slices, 1))}
    assert got["P", "s1.png"] == ["s1.png", "s1.png", "s2.png"]  # first slice: the edge is repeated
    assert got["P", "s9.png"] == ["s2.png", "s9.png", "s10.png"]  # natural order, across normal/ and metastatic/
    assert got["P", "s10.png"] == ["s9.png", "s10.png", "s10.png"]
    assert got["Q", "s5.png"] == ["s5.png"] * 3  # another patient's slices are never neighbours
    assert context_paths(slices, 0) == [[s.path] for s in slices]


def test_pretrained_3_channel_weights_spread_over_stacked_slices(tmp_path) -> None:
    """--context with --pretrained: three copies of one slice give the 3-channel model's logits exactly."""
    torch.manual_seed(0)
    flat = create_classifier("small_cnn16", img_size=64).eval()
    path = tmp_path / "w.pth"
    torch.save(flat.backbone.state_dict(), path)
    stacked = create_classifier("small_cnn16", img_size=64, in_chans=9)
    assert "9 input channels" in load_pretrained(stacked.backbone, path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(stacked.eval()(x.repeat(1, 3, 1, 1)), flat(x), atol=1e-5)
    with pytest.raises(BonemetError, match="multiple of 3"):
        create_classifier("small_cnn16", in_chans=4)


@pytest.mark.parametrize("context, mirror", [(1, False), (0, True)])
def test_context_and_mirror_runs_build_the_same_input_in_evaluate_explain_and_predict(phantom, tmp_path, context,
                                                                                      mirror) -> None:
    from bonemet.data.classification import slice_sort_key
    from bonemet.data.datasets import prepare_image, stack_slices
    from bonemet.data.images import read_image
    from bonemet.inference.runners import ClsRunner
    from bonemet.inference.scan import read_scan
    from bonemet.runs.cls import load_cls_run

    data = phantom / "classification"
    run = tmp_path / "run"
    r = invoke("cls", "train", "--data", data, "--model", "small_cnn16", "--size", "64", "--epochs", "1",
               "--crop", "body", "--context", str(context), *(["--mirror"] if mirror else []),
               "--test-patients", "0.5", "--out", run)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["context"] == context and cfg["mirror"] == mirror
    assert cfg["preprocessing"]["channels"] == 3 * (2 * context + 1) * (2 if mirror else 1)
    assert invoke("cls", "evaluate", run).returncode == 0
    with open(run / "eval" / "predictions.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["slice"].startswith("Normal/")]
    row = rows[len(rows) // 2]  # a healthy test patient's middle slice: all its slices sit in one folder
    files = sorted((data / row["slice"]).parent.glob("*.png"), key=slice_sort_key)
    k = [p.name for p in files].index(Path(row["slice"]).name)
    _, _, (model,) = load_cls_run(run)
    x = prepare_image(stack_slices([read_image(p) for p in files[k - context:k + context + 1]], 3), 64, "body",
                      mirror)
    with torch.no_grad():
        p = float(torch.softmax(model(x[None]), 1)[0, 1])
    assert p == pytest.approx(float(row["probability"]), abs=1e-5)  # evaluate built the same input
    assert ClsRunner(run).predict(read_scan(files[0].parent))[k] == pytest.approx(p, abs=1e-5)  # and predict
    r = invoke("cls", "explain", run, "--slices", data / row["slice"], "--out", tmp_path / "x.png")
    assert r.returncode == 0 and (tmp_path / "x.png").stat().st_size > 0, r.stderr
    if context:
        stray = tmp_path / "stray.png"
        stray.write_bytes(files[k].read_bytes())
        r = invoke("cls", "explain", run, "--slices", stray, "--out", tmp_path / "y.png")
        assert r.returncode == 2 and "not a slice of the run's data root" in r.stderr and "Traceback" not in r.stderr


def test_mirror_channels_are_the_left_right_asymmetry_of_the_image_only(phantom) -> None:
    from bonemet.data.classification import lesion_mask_paths, load_classification
    from bonemet.data.datasets import ClassificationDataset, add_mirror

    t = torch.rand(3, 8, 8)
    sym = torch.cat([t[..., :4], t[..., :4].flip(-1)], -1)  # symmetric about the vertical midline
    assert torch.equal(add_mirror(sym)[3:], torch.zeros(3, 8, 8))
    t[:, 2, 1] = 1.0
    t[:, 2, 6] = 0.0  # a bright spot on the left, nothing at its mirror position
    out = add_mirror(t)
    assert out.shape == (6, 8, 8) and torch.equal(out[:3], t)
    assert torch.equal(out[3:, 2, 1], torch.ones(3)) and torch.equal(out[3:, 2, 6], -torch.ones(3))
    norm = create_classifier("small_cnn16", in_chans=6, mirror=True).norm  # differences stay centred on 0
    assert norm.mean.flatten().tolist() == [0.5] * 3 + [0.0] * 3 and norm.std.flatten().tolist() == [0.25] * 6
    index = load_classification(phantom / "classification")
    met = [s for s in index.slices if s.label == 1][:2]
    masks = lesion_mask_paths(met, phantom / "bmseg", check_labels=True)
    plain = ClassificationDataset(met, 64, 3, crop="body", masks=masks)
    mirrored = ClassificationDataset(met, 64, 3, crop="body", masks=masks, mirror=True)
    for i in range(len(met)):
        img, _, mask = plain[i]
        img_m, _, mask_m = mirrored[i]
        assert torch.equal(img_m, add_mirror(img)) and torch.equal(mask_m, mask)  # the mask is not mirrored


def test_lesion_map_loss_pools_masks_to_the_grid_and_balances_the_classes() -> None:
    from bonemet.training.cls import lesion_map_loss

    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 5, 6] = 1.0  # one lesion pixel: its 4x4 cell of a 2x2 grid is a lesion cell
    logits = torch.zeros(1, 1, 2, 2)
    # at logit 0 every cell costs log 2; the one lesion cell is weighted 3 (3 normal cells per lesion cell)
    assert float(lesion_map_loss(logits, mask)) == pytest.approx(math.log(2) * (3 * 1 + 3) / 4, rel=1e-6)
    good = torch.tensor([[[[-9.0, -9.0], [-9.0, 9.0]]]])
    assert float(lesion_map_loss(good, mask)) < 1e-3 < float(lesion_map_loss(-good, mask))
    assert float(lesion_map_loss(logits, torch.zeros(1, 1, 8, 8))) == pytest.approx(math.log(2))  # no lesion


def test_masks_are_cropped_resized_and_augmented_with_their_slices(phantom) -> None:
    from bonemet.data.classification import lesion_mask_paths, load_classification
    from bonemet.data.datasets import ClassificationDataset
    from bonemet.training.cls import cls_augment

    index = load_classification(phantom / "classification")
    met = [s for s in index.slices if s.label == 1][:4]
    masks = lesion_mask_paths(met, phantom / "bmseg", check_labels=True)
    assert [m.stem for m in masks] == [s.path.stem for s in met]
    plain = ClassificationDataset(met, 64, 3, crop="body")
    with_masks = ClassificationDataset(met, 64, 3, crop="body", masks=masks)
    flip = cls_augment(vflip=1.0)
    flip.degrees, flip.p_hflip = 0.0, 1.0  # both flips, no rotation: an exact, checkable transform
    flipped = ClassificationDataset(met, 64, 3, crop="body", masks=masks, transform=lambda t: flip({"image": t})["image"])
    for i in range(len(met)):
        img, label, mask = with_masks[i]
        assert label == 1 and mask.shape == (1, 64, 64) and mask.max() > 0
        assert torch.equal(img, plain[i][0])  # the mask does not change the image's crop
        img_f, _, mask_f = flipped[i]
        assert torch.equal(img_f, img.flip(-1, -2)) and torch.equal(mask_f, mask.flip(-1, -2))


def test_training_with_lesion_masks(phantom, tmp_path) -> None:
    """--masks adds a lesion-map loss for CNNs; evaluation is unchanged; wrong mask roots fail in one line."""
    data = phantom / "classification"
    run = tmp_path / "run"
    r = invoke("cls", "train", "--data", data, "--model", "small_cnn16", "--size", "64", "--epochs", "1",
               "--crop", "body", "--masks", phantom / "bmseg", "--test-patients", "0.5", "--out", run)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["masks"] == str(phantom / "bmseg") and "lesion-map loss" in cfg["preprocessing"]["lesion masks"]
    assert "lesion_head.weight" in torch.load(run / "fold0" / "last.pt", weights_only=True)["model"]
    assert invoke("cls", "evaluate", run).returncode == 0
    # another patient's masks under this patient's names contradict the slice labels
    other = tmp_path / "other"
    shutil.copytree(phantom / "bmseg", other)
    met = sorted((data / "Abnormal").glob("*/metastatic/*.png"))[0]
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(other / "lesion mask" / met.name)  # an empty mask
    r = invoke("cls", "train", "--data", data, "--model", "small_cnn16", "--size", "64", "--epochs", "1",
               "--masks", other, "--out", tmp_path / "bad")
    assert r.returncode != 0 and "contradicts its slice's label" in r.stderr and "Traceback" not in r.stderr
    assert met.name in r.stderr
    for folder in ("image", "lesion mask", "bone mask"):  # the slice is missing from the mask root
        (other / folder / met.name).unlink()
    r = invoke("cls", "train", "--data", data, "--model", "small_cnn16", "--size", "64", "--epochs", "1",
               "--masks", other, "--out", tmp_path / "bad2")
    assert r.returncode != 0 and "no lesion mask" in r.stderr and "Traceback" not in r.stderr
    r = invoke("cls", "train", "--data", data, "--model", "vit_tiny_patch16_224", "--size", "64", "--epochs", "1",
               "--masks", phantom / "bmseg", "--out", tmp_path / "bad3")
    assert r.returncode != 0 and "--masks needs a CNN" in r.stderr and "Traceback" not in r.stderr


def test_default_epochs_are_the_schedule_s_own_length() -> None:
    import inspect

    from bonemet.cli.cls import train
    from bonemet.runs.cls import ClsConfig
    from bonemet.training.schedule import PiecewiseLR

    assert inspect.signature(train).parameters["epochs"].default is None  # the CLI leaves it to the schedule
    vit = ClsConfig(data="x", model="vit_tiny_patch16_224")
    assert vit.schedule_name() == "transformer" and vit.epochs == 80
    schedule = PiecewiseLR(vit.schedule_name(), vit.epochs)
    assert [e for e, _ in schedule.steps] == [0, 10, 20, 30, 70]
    assert [schedule(e) for e in (0, 9, 10, 19, 20, 30, 69, 70, 79)] == [1e-3, 1e-3, 1e-2, 1e-2, 1e-3, 1e-4, 1e-4,
                                                                          1e-5, 1e-5]
    cnn = ClsConfig(data="x", model="resnet18")
    assert cnn.epochs == 60 and [e for e, _ in PiecewiseLR(cnn.schedule_name(), 60).steps] == [0, 20, 40]
    assert ClsConfig(data="x", model="vit_tiny_patch16_224", epochs=8).epochs == 8  # asked for: kept
