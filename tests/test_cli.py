"""The data CLI end to end, and bad input: one clear line, a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom

from bonemet.data.images import write_image
from conftest import invoke, run_cli
from test_readers import make_bmseg


def assert_clean_failure(res, *words: str) -> None:
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    text = res.stderr.lower()
    for w in words:
        assert w.lower() in text, res.stderr


def test_synth_check_stats_split(phantom: Path, tmp_path):
    res = run_cli("data", "check", phantom)
    assert res.returncode == 0, res.stderr
    for layout in ("BM-Seg", "classification", "volumes", "DICOM"):
        assert layout in res.stdout
    res = invoke("data", "stats", phantom)
    assert res.returncode == 0, res.stderr
    assert "bone median" in res.stdout and "lesion pixel fraction" in res.stdout
    res = invoke("data", "split", phantom / "bmseg", tmp_path / "run" / "splits.json", "--folds", "2",
                 "--test-patients", "0.25")
    assert res.returncode == 0, res.stderr
    sp = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert len(sp["test_patients"]) == 1 and len(sp["folds"]) == 2
    res = invoke("data", "split", phantom / "bmseg", tmp_path / "paper.json", "--protocol", "paper")
    assert res.returncode == 0 and "patients leak" in json.loads((tmp_path / "paper.json").read_text())["label"]


def test_synth_thighs_runs_the_scans_on_to_mid_thigh(tmp_path):
    """``data synth --thighs``: the lowest slice cuts two thighs, each with a femoral shaft (two bone components),
    and the data set's description says so."""
    import nibabel as nib
    from scipy import ndimage

    res = invoke("data", "synth", tmp_path / "t", "--patients", "1", "--size", "64", "--slices", "13", "--formats",
                 "volumes", "--thighs")
    assert res.returncode == 0, res.stderr
    case = tmp_path / "t" / "volumes" / "P000"
    low = np.asarray(nib.load(case / "ct.nii.gz").dataobj)[:, :, 0]
    bone = np.asarray(nib.load(case / "bone_mask.nii.gz").dataobj)[:, :, 0] > 0
    assert ndimage.label(low > -500)[1] == 2 and ndimage.label(bone)[1] == 2
    assert json.loads((tmp_path / "t" / "phantom.json").read_text())["thighs"] is True


def test_stats_compares_phantom_with_real_ct(phantom: Path, real_ct: Path):
    res = invoke("data", "stats", phantom / "volumes", "--reference", real_ct / "abdomen_3mm_ct.nii.gz",
                 "--reference-bone-mask", real_ct / "abdomen_3mm_bone_mask.nii.gz")
    assert res.returncode == 0, res.stderr
    ref = [line for line in res.stdout.splitlines() if "(reference)" in line][0]
    assert "| 170.0 |" in ref
    mean = [line for line in res.stdout.splitlines() if "healthy-bone mean" in line][0]
    median = float(mean.split("|")[3])
    assert 120 <= median <= 300


def test_synth_from_real_ct(real_ct: Path, tmp_path):
    res = invoke("data", "synth", tmp_path / "semi", "--from-ct", real_ct / "abdomen_3mm_ct.nii.gz",
                 "--bone-mask", real_ct / "abdomen_3mm_bone_mask.nii.gz", "--lesions", "3")
    assert res.returncode == 0, res.stderr
    assert invoke("data", "check", tmp_path / "semi").returncode == 0


def test_synth_from_real_ct_without_a_bone_mask(real_ct: Path, tmp_path):
    """Without --bone-mask the lesions go where HU says bone is sure, and no bone mask is written (the rule's mask is
    not a bone label); a CT with nothing dense enough is one clear line and no output."""
    import nibabel as nib

    res = invoke("data", "synth", tmp_path / "semi", "--from-ct", real_ct / "chest_abdomen_dicom", "--lesions", "3",
                 "--formats", "volumes,bmseg")
    assert res.returncode == 0, res.stderr
    assert "no --bone-mask" in res.stderr
    semi = tmp_path / "semi"
    assert not (semi / "bmseg" / "bone mask").exists()
    assert not (semi / "volumes" / "CT000" / "bone_mask.nii.gz").exists()
    assert json.loads((semi / "phantom.json").read_text())["bone_mask"] is None
    assert len((semi / "lesions.csv").read_text().splitlines()) == 4
    assert invoke("data", "check", semi).returncode == 0
    water = tmp_path / "water.nii.gz"
    noise = np.random.default_rng(0).normal(40, 10, (32, 32, 4))  # water and a scanner's noise, nothing dense,
    noise[:4] -= 1040  # in air
    nib.save(nib.Nifti1Image(noise.astype(np.int16), np.diag([1.0, 1.0, 2.0, 1.0])), water)
    bad = invoke("data", "synth", tmp_path / "none", "--from-ct", water)
    assert bad.returncode == 2 and not (tmp_path / "none").exists()
    assert_clean_failure(bad, "water.nii.gz", "no voxel is surely bone")


def test_check_reads_one_nifti_ct_as_predict_would(phantom: Path):
    """``data check scan.nii.gz``: a CT is counted and ok; a mask given in its place is one problem line and exit 2,
    before anything else reads it."""
    pid = sorted(d.name for d in (phantom / "volumes").iterdir())[0]
    ok = invoke("data", "check", phantom / "volumes" / pid / "ct.nii.gz")
    assert ok.returncode == 0, ok.stderr
    ct = phantom / "volumes" / pid / "ct.nii.gz"
    assert ok.stdout.splitlines() == [f"{ct}: NIfTI CT: 40 slices", "ok"]  # the fixture's 40 slices
    bad = invoke("data", "check", phantom / "volumes" / pid / "lesion_mask.nii.gz")
    assert_clean_failure(bad, "lesion_mask.nii.gz", "a label mask or a blank image, not a ct in hu")
    assert bad.returncode == 2


def test_missing_mask(tmp_path):
    make_bmseg(tmp_path, {"A": 2}, grouped=False)
    (tmp_path / "lesion mask" / "A_1.png").unlink()
    res = invoke("data", "check", tmp_path)
    assert_clean_failure(res, "A_1.png", "without lesion mask")
    assert res.returncode == 2


def test_mask_of_wrong_size(tmp_path):
    make_bmseg(tmp_path, {"A": 2}, grouped=False)
    write_image(tmp_path / "bone mask" / "A_0.png", np.ones((20, 20), bool))
    res = invoke("data", "check", tmp_path)
    assert_clean_failure(res, "A_0.png", "does not match")


def test_truncated_jpeg(tmp_path):
    make_bmseg(tmp_path, {"A": 2}, grouped=False, size=64, ext="jpg")
    f = tmp_path / "image" / "A_1.jpg"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    res = invoke("data", "check", tmp_path)
    assert_clean_failure(res, "A_1.jpg", "unreadable")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    res = invoke("data", "check", tmp_path / "empty")
    assert_clean_failure(res, "empty folder")
    res = invoke("data", "convert", tmp_path / "empty", tmp_path / "out")
    assert_clean_failure(res, "empty folder")
    assert not (tmp_path / "out").exists(), "no half-written output"


def test_an_image_folder_of_other_files_is_named_with_them(tmp_path):
    """A folder whose ``ct/`` holds a DICOM series, not slices, is not called empty: the check says what it holds."""
    (tmp_path / "study" / "ct").mkdir(parents=True)
    for name in ("01.dcm", "02.dcm", "03.dcm", "04.dcm"):
        (tmp_path / "study" / "ct" / name).write_bytes(b"\0" * 132)
    res = invoke("data", "check", tmp_path / "study")
    assert_clean_failure(res, "ct: no png / jpeg slice among its 4 file(s) (01.dcm, 02.dcm, 03.dcm, ...)")


def test_convert_refuses_a_partial_bone_label_beside_a_bone_mask(phantom: Path, tmp_path):
    ct = phantom / "volumes" / "P000"
    res = invoke("data", "convert", ct / "ct.nii.gz", tmp_path / "out", "--partial-bone", "--bone-mask",
                 ct / "bone_mask.nii.gz")
    assert res.returncode == 2
    assert_clean_failure(res, "--partial-bone and --bone-mask exclude each other")
    assert not (tmp_path / "out").exists()


def test_non_ct_dicom(phantom: Path, tmp_path):
    src = sorted((phantom / "dicom" / "P000").iterdir())[:3]
    mr = tmp_path / "mr"
    mr.mkdir()
    for f in src:
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.save_as(mr / f.name)
    res = invoke("data", "convert", mr, tmp_path / "out")
    assert_clean_failure(res, "no CT series", "MR")
    assert not (tmp_path / "out").exists()


def test_truncated_dicom_slice_is_named(phantom: Path, tmp_path):
    import shutil

    series = tmp_path / "series"
    shutil.copytree(phantom / "dicom" / "P001", series)
    files = sorted(series.iterdir())
    victim = files[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[:2000])
    res = invoke("data", "convert", series, tmp_path / "out")
    assert_clean_failure(res, victim.name)


def _field_default(f):
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def test_every_cli_default_is_its_config_fields_default():
    """An option that sets a config field has that field's default (through the option's own spelling where it
    differs), so that `--help` and a run built from the Python API cannot drift apart; a field no option sets is
    named here on purpose."""
    import dataclasses

    import typer

    from bonemet.cli.main import app
    from bonemet.inference.fast import parse_paths
    from bonemet.inference.predict import PredictOptions
    from bonemet.runs.cls import ClsConfig
    from bonemet.runs.seg import SegConfig

    same = lambda v: v  # noqa: E731
    commands = {  # command: (config, {option: (field, the field's value for the option's value)}, fields not set)
        ("seg", "train"): (SegConfig, {"single_decoder": ("dual_decoder", lambda v: False if v else None),
                                       "no_augment": ("augment", lambda v: not v)},
                           {"mask_resize", "inner_val", "preprocessing", "distributed", "train_always"}),
        ("cls", "train"): (ClsConfig, {"no_augment": ("augment", lambda v: not v),
                                       "pretrained": ("pretrained", lambda v: list(v or []))},
                           {"inner_val", "preprocessing", "distributed", "weights"}),
        ("predict",): (PredictOptions, {"min_volume": ("min_volume_ml", same),
                                        "no_dicom_seg": ("dicom_seg", lambda v: not v),
                                        "fast": ("paths", lambda v: None if v is None else parse_paths(v)),
                                        "bone_margin": ("bone_margin_mm", same),
                                        "raw_bone": ("refine_bone", lambda v: not v)}, {"min_voxels"}),
    }
    root = typer.main.get_command(app)
    for path, (config, renamed, unset) in commands.items():
        command = root
        for name in path:
            command = command.commands[name]
        fields = {f.name: f for f in dataclasses.fields(config)}
        covered = set()
        for param in command.params:
            field, value = renamed.get(param.name, (param.name, same))
            if field not in fields:
                continue
            covered.add(field)
            default = _field_default(fields[field])
            if default is dataclasses.MISSING:
                assert param.required, (path, param.name)
                continue
            assert value(param.default) == default, (path, param.name, param.default, default)
        assert set(fields) - covered == unset, (path, set(fields) - covered)
    # the help of --fast names the default paths and every path there is
    from bonemet.inference import fast

    help_text = " ".join(next(p for p in root.commands["predict"].params if p.name == "fast").help.split())
    assert f"default: {','.join((*fast.DEFAULT_PATH, 'bf16'))} where the CPU has native bf16" in help_text
    assert f"else {','.join(fast.DEFAULT_PATH)}; on a GPU {','.join(fast.GPU_DEFAULT_PATH)}, where " in help_text
    assert f"where {', '.join(fast.GPU_PATHS[:-1])} and {fast.GPU_PATHS[-1]} run)" in help_text
    assert all(p in help_text for p in fast.PATHS)
