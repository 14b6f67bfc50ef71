"""The viewer in report.html and the review page, opened in headless Chromium (driven by Playwright), plus the
Slicer segmentation file. Set BONEMET_UPDATE_SCREENSHOTS=1 to refresh docs/img/viewer.png from the viewer test."""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT, invoke

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the pages were not opened in a browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install "
                                                                "playwright): the pages were not opened in a browser")
    with sync_api.sync_playwright() as p:
        # WebGL2 in software (SwiftShader), as on a machine without a GPU
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--enable-unsafe-swiftshader"])
        yield p, b
        b.close()


def _metastatic(phantom: Path) -> str:
    with open(phantom / "patients.csv", newline="") as fh:
        return next(r["patient"] for r in csv.DictReader(fh) if r["status"] == "metastatic")


@pytest.fixture(scope="module")
def truth_model(phantom: Path):
    """The segmentation run's models replaced by the phantom's truth (0.9 in lesion and bone, 0.05 elsewhere):
    reports with several lesions where they really are, without training a model that finds them."""
    from bonemet.data.volume import read_mask_like
    from bonemet.inference.runners import SegRunner

    def predict(self, scan, window=None, batch_size=None, progress=None, flip=False):
        name = scan.source.name  # dicom/P000, volumes/P000/ct.nii.gz or P000.nii.gz
        pid = scan.source.parent.name if name.startswith("ct.") else name.split(".")[0]
        probs = [(read_mask_like(phantom / "volumes" / pid / f"{kind}_mask.nii.gz", scan.volume, allow_empty=True)
                  .transpose(2, 1, 0) * 0.85 + 0.05).astype(np.float16) for kind in ("lesion", "bone")]
        if progress:
            progress(scan.n_slices)
        return probs[0], probs[1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SegRunner, "predict", predict)
        yield


@pytest.fixture(scope="module")
def report(phantom: Path, seg_run: Path, truth_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("viewer") / "pred"
    r = invoke("predict", phantom / "dicom" / _metastatic(phantom), "--seg", seg_run, "--out", out, "--probabilities")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["lesions"] >= 2
    return out


def _watch(page) -> tuple[list, list]:
    problems, requests = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    return problems, requests


@pytest.mark.slow
def test_viewer_draws_jumps_to_each_lesion_and_stays_offline(browser, report: Path) -> None:
    from PIL import Image

    _, b = browser
    page = b.new_page(viewport={"width": 1200, "height": 900})
    problems, requests = _watch(page)
    url = (report / "report.html").resolve().as_uri()
    page.goto(url)
    page.wait_for_selector("#viewer[data-ready]", timeout=60_000)
    shot = report.parent / "viewer.png"
    page.locator("#viewer-box").screenshot(path=shot)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50  # the CT and its overlays, not a blank canvas
    lesions = json.loads((report / "lesions.json").read_text())
    n = json.loads((report / "summary.json").read_text())["input"]["slices"]
    rows = page.query_selector_all("tr[data-vox]")
    assert [int(r.get_attribute("data-lesion")) for r in rows] == [les["id"] for les in lesions]
    for row, les in reversed(list(zip(rows, lesions))):
        row.click()
        assert page.get_attribute("#viewer-slice", "data-slice") == str(les["key_slice"])
        assert page.inner_text("#viewer-slice") == f"{les['key_slice'] + 1} / {n}"
    linked = b.new_page()  # a link of the review page: straight to that lesion
    more, more_requests = _watch(linked)
    linked.goto(url + "#lesion-2")
    linked.wait_for_selector("#viewer[data-ready]", timeout=60_000)
    assert linked.get_attribute("#viewer-slice", "data-slice") == str(lesions[1]["key_slice"]) != str(
        max(lesions, key=lambda les: les["max_probability"])["key_slice"])
    linked.close()
    problems += more
    requests += more_requests
    assert not problems, problems
    assert {u.split("#")[0] for u in requests} == {url}, requests  # nothing but the file itself
    if os.environ.get("BONEMET_UPDATE_SCREENSHOTS"):
        page.set_viewport_size({"width": 1100, "height": 800})
        page.locator("#viewer").screenshot(path=ROOT / "docs" / "img" / "viewer.png")
    page.close()


def test_without_webgl_the_report_keeps_its_still_images_and_says_why(browser, report: Path) -> None:
    from bonemet.reporting.viewer import NO_WEBGL

    p, _ = browser
    b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-webgl", "--disable-3d-apis"])
    page = b.new_page()
    problems, _ = _watch(page)
    page.goto((report / "report.html").resolve().as_uri())
    page.wait_for_function("!document.getElementById('viewer-notice').hidden")
    assert page.inner_text("#viewer-notice") == NO_WEBGL
    assert not page.is_visible("#viewer") and page.query_selector_all("figure img")
    assert not problems, problems
    b.close()


def test_viewer_reads_hu_at_the_lesion_and_the_report_can_leave_it_out(browser, report: Path, phantom: Path,
                                                                       seg_run: Path, tmp_path: Path) -> None:
    from bonemet.inference.scan import read_scan

    _, b = browser
    page = b.new_page()
    page.goto((report / "report.html").resolve().as_uri() + "#lesion-1")
    page.wait_for_selector("#viewer[data-ready]", timeout=60_000)
    les = json.loads((report / "lesions.json").read_text())[0]
    i, j, _ = (int(v) for v in les["centroid_voxel"].split())
    vol = read_scan(phantom / "dicom" / _metastatic(phantom)).volume
    assert int(page.inner_text("#viewer-hu")) == int(np.clip(np.rint(vol.array[i, j, les["key_slice"]]), -1024, 3071))
    page.close()
    size = (report / "report.html").stat().st_size
    small = tmp_path / "small"
    r = invoke("predict", phantom / "dicom" / _metastatic(phantom), "--seg", seg_run, "--out", small, "--no-viewer")
    assert r.returncode == 0, r.stderr
    text = (small / "report.html").read_text()
    assert "viewer-data" not in text and "<img" in text and (small / "report.html").stat().st_size < size - 2_000_000
    capped = tmp_path / "capped"
    r = invoke("predict", phantom / "volumes" / _metastatic(phantom) / "ct.nii.gz", "--seg", seg_run, "--out", capped,
               "--viewer-max-mb", "0.01")
    assert r.returncode == 0, r.stderr
    text = (capped / "report.html").read_text()
    assert "viewer-data" not in text and "more than the 0.01 MB limit (predict --viewer-max-mb)" in text


@pytest.fixture(scope="module")
def batch(phantom: Path, seg_run: Path, truth_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cases = tmp_path_factory.mktemp("cases")
    for pid in ("P000", "P001"):
        shutil.copy(phantom / "volumes" / pid / "ct.nii.gz", cases / f"{pid}.nii.gz")
    out = tmp_path_factory.mktemp("review") / "batch"
    r = invoke("predict", cases, "--batch", "--seg", seg_run, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_review_marks_round_trip_through_the_served_page(browser, batch: Path) -> None:
    from bonemet.fileio import owned_output
    from bonemet.reporting.review import make_server

    server = make_server(batch, port=0)
    assert server.server_address[0] == "127.0.0.1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    before = {p.name: p.read_bytes() for p in batch.rglob("*") if p.is_file() and p.name != ".bonemet.json"}
    try:
        _, b = browser
        page = b.new_page()
        problems, _ = _watch(page)
        page.goto(base)
        page.wait_for_selector("body[data-ready]")
        assert page.eval_on_selector_all("tr[data-case]", "rs => rs.map(r => r.dataset.case)") == ["P000", "P001"]
        page.click("th[data-key=case]")  # sorted the other way
        assert page.eval_on_selector_all("tr[data-case]", "rs => rs.map(r => r.dataset.case)") == ["P001", "P000"]
        page.fill("#filter", "P001")
        assert page.inner_text("#count") == "1 of 2 cases"
        page.fill("#filter", "")
        selects = page.query_selector_all("select[data-lesion]")
        assert len(selects) >= 2
        picked = {(s.get_attribute("data-case"), int(s.get_attribute("data-lesion"))): m
                  for s, m in zip(selects[:2], ("confirmed", "rejected"))}
        for s, m in zip(selects[:2], ("confirmed", "rejected")):
            s.select_option(m)
        page.click("#save")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('saved')")
        assert page.inner_text("#status") == "saved 2 mark(s) to review_marks.csv"
        page.reload()
        page.wait_for_selector("body[data-ready]")
        shown = {(s.get_attribute("data-case"), int(s.get_attribute("data-lesion"))): s.input_value()
                 for s in page.query_selector_all("select[data-lesion]") if s.input_value()}
        assert shown == picked
        assert not problems, problems
        page.close()
        with open(batch / "review_marks.csv", newline="") as fh:
            saved = {(r["case"], int(r["lesion"])): r["mark"] for r in csv.DictReader(fh)}
        assert saved == picked
        # a mark of a lesion that does not exist is refused, and the file stays as it was
        bad = urllib.request.Request(base + "api/marks", data=json.dumps([{"case": "P000", "lesion": 999,
                                                                            "mark": "confirmed"}]).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad)
        assert err.value.code == 400
        with open(batch / "review_marks.csv", newline="") as fh:
            assert len(list(csv.DictReader(fh))) == 2
        for path in ("/../cohort.csv", "/.bonemet.json", "/%2e%2e/etc/passwd"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base.rstrip("/") + path)
            assert err.value.code == 404, path
    finally:
        server.shutdown()
        server.server_close()
    after = {p.name: p.read_bytes() for p in batch.rglob("*") if p.is_file() and p.name != ".bonemet.json"}
    assert {k: v for k, v in after.items() if k in before} == before  # the predictions are untouched
    assert set(after) - set(before) == {"review_marks.csv"}
    assert owned_output(batch, "predict-batch") == (True, "")  # a later predict --batch still owns the folder


def test_review_page_escapes_what_came_from_the_scan_and_refuses_other_folders(batch: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(batch, copy)
    lesions = json.loads((copy / "P000" / "lesions.json").read_text())
    lesions[0]["site"] = "</script><script>alert(1)</script>"
    (copy / "P000" / "lesions.json").write_text(json.dumps(lesions))
    r = invoke("review", copy)
    assert r.returncode == 0, r.stderr
    page = (copy / "review.html").read_text()
    assert "alert(1)" in page and "</script><script>alert" not in page
    r = invoke("review", tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {tmp_path}: not a folder of predictions written by 'bonemet predict --batch'"


def test_slicer_segmentation_lies_where_the_nifti_masks_do(report: Path) -> None:
    import nrrd

    labels, header = nrrd.read(str(report / "segmentation.seg.nrrd"))
    names = {header[f"Segment{i}_Name"]: int(header[f"Segment{i}_LabelValue"]) for i in range(2)}
    assert names == {"bone": 1, "lesion": 2}
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = np.asarray(header["space directions"]).T, header["space origin"]
    world_seg = np.diag([-1, -1, 1, 1]) @ lps @ np.c_[np.argwhere(labels == 2), np.ones((labels == 2).sum())].T
    img = nib.load(report / "lesion_mask.nii.gz")
    mask = np.asarray(img.dataobj) > 0
    world_nii = img.affine @ np.c_[np.argwhere(mask), np.ones(mask.sum())].T
    assert mask.sum() == (labels == 2).sum() > 0
    key = lambda w: sorted(map(tuple, np.round(w[:3].T, 3)))  # noqa: E731
    assert key(world_seg) == key(world_nii)
