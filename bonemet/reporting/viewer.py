"""The interactive viewer of ``report.html``: the CT and the masks in three planes and a 3D rendering, drawn by
NiiVue (vendored in ``vendor/``, BSD-2-Clause), embedded in the report so that it opens offline from disk.

The CT goes in at its own resolution as int16 NIfTI, gzip, base64 (with the lesion labels, the bone mask and,
when kept, the lesion probabilities beside it); above ``max_mb`` of such data the report keeps its still images
only and says why. gzip runs at level 1: on CT it was 3.4-5.5 times faster than level 6 for 1.7-2.7 % more
bytes. A scan whose CT alone clearly passes ``max_mb``, judged from a tenth of its slices, is not compressed
whole. Everything from the scan's headers reaches the page as JSON read by ``textContent``, never as markup.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from functools import cache
from pathlib import Path

import numpy as np

VENDOR = Path(__file__).with_name("vendor")
DEFAULT_MAX_MB = 64.0  # embedded image data (base64) above which the report has still images only
GZIP_LEVEL = 1
CLEARLY_OVER = 1.1  # an estimated CT payload this many times the limit is left out without compressing it whole
WINDOWS = {"bone": (-500, 1300), "soft tissue": (-160, 240), "lung": (-1350, 150)}  # (min, max) HU
NO_WEBGL = ("This browser has no WebGL2: the interactive viewer is off; the key slices below show the findings.")


@cache
def niivue_js() -> str:
    return (VENDOR / "niivue.umd.js").read_text(encoding="utf-8")


def niivue_version() -> str:
    return (VENDOR / "NIIVUE_VERSION").read_text().strip()


def nifti_base64(array: np.ndarray, affine: np.ndarray) -> str:
    """``array`` on the voxel-to-RAS ``affine`` as a gzipped NIfTI-1 file, base64."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, float))
    img.header.set_xyzt_units("mm")
    return base64.b64encode(gzip.compress(img.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)).decode("ascii")


class RASGrid:
    """The scan's grid turned to RAS axis order (NiiVue's voxel space: its voxel numbers are then the array's),
    and the way of a voxel of the scan's own grid there."""

    def __init__(self, volume) -> None:
        import nibabel as nib

        self.source = np.asarray(volume.affine, float)
        ornt = nib.orientations.io_orientation(self.source)
        self.transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("R", "A", "S")))
        self.affine = self.source @ nib.orientations.inv_ornt_aff(self.transform, volume.array.shape)

    def array(self, a: np.ndarray) -> np.ndarray:
        import nibabel as nib

        return np.ascontiguousarray(nib.orientations.apply_orientation(a, self.transform))

    def voxel(self, ijk) -> list[int]:
        """A voxel (i, j, k) of the scan's grid as a voxel of the RAS grid."""
        world = self.source @ np.array([*ijk, 1.0])
        return [int(round(v)) for v in (np.linalg.inv(self.affine) @ world)[:3]]


def ct_for_viewer(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), -1024, 3071).astype(np.int16)


def estimated_ct_mb(volume) -> float:
    """The CT layer's embedded size in MB, from every k-th slice (about a tenth of them) scaled to the whole scan;
    within 1 % of the true size on the real series and phantoms tried."""
    n = volume.array.shape[-1]
    step = max(1, n // 10)
    sample = ct_for_viewer(volume.array[..., ::step])
    return len(nifti_base64(sample, volume.affine)) / 1e6 * n / sample.shape[-1]


def viewer_layers(volume, labels: np.ndarray | None, bone: np.ndarray | None,
                  probability: np.ndarray | None) -> tuple[dict[str, str], RASGrid]:
    """The embedded images: CT (int16 HU), lesion labels, bone mask and lesion probability (percent), on the
    scan's grid turned to RAS order; and that grid."""
    grid = RASGrid(volume)
    arrays = {"ct": ct_for_viewer(volume.array)}
    if labels is not None:
        arrays["lesion"] = (np.asarray(labels) > 0).astype(np.uint8)
    if bone is not None:
        arrays["bone"] = np.asarray(bone, bool).astype(np.uint8)
    if probability is not None:
        arrays["probability"] = np.rint(np.asarray(probability, np.float32) * 100).astype(np.uint8)
    return {name: nifti_base64(grid.array(a), grid.affine) for name, a in arrays.items()}, grid


def payload_mb(layers: dict[str, str]) -> float:
    return sum(len(v) for v in layers.values()) / 1e6


def left_out(size: str, max_mb: float) -> str:
    return (f"<p class='note'>The interactive viewer is left out: this scan's images take {size} MB embedded, "
            f"more than the {max_mb:g} MB limit (predict --viewer-max-mb); the key slices below show the "
            "findings, and lesion_mask.nii.gz / lesions_seg.dcm open in 3D Slicer.</p>")


def json_for_script(data: dict) -> str:
    """JSON that cannot end its ``<script>`` element early (``</`` and ``<!--`` escaped)."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


CSS = """.viewer-controls{display:flex;flex-wrap:wrap;gap:.4em 1.2em;font-size:.85em;margin:.4em 0}
.viewer-controls label{white-space:nowrap}.viewer-controls input[type=number]{width:5em}
#viewer-box{width:100%;height:640px;background:#000}#viewer-readout{font:13px monospace;margin:.3em 0}
tr[data-vox]{cursor:pointer}tr[data-vox]:hover td{background:#fff4c2}"""

CONTROLS = """<div class='viewer-controls'>
<label>view <select id='viewer-view'><option value='3'>three planes + 3D</option><option value='0'>axial</option>
<option value='1'>coronal</option><option value='2'>sagittal</option><option value='4'>3D</option></select></label>
<label>window <select id='viewer-window'>{windows}</select></label>
<label>min <input id='viewer-min' type='number' step='10'> max <input id='viewer-max' type='number' step='10'> HU</label>
{layers}
</div>"""

LAYER_CONTROL = ("<label><input type='checkbox' id='show-{name}' {checked}> {label} <input type='range' "
                 "id='opacity-{name}' min='0' max='1' step='0.05' value='{opacity}'></label>")

LAYERS = (("lesion", "lesions", "red", 0.6, True), ("bone", "bone", "blue", 0.25, True),
          ("probability", "probability", "warm", 0.5, False))

SCRIPT = r"""(function () {
  const data = JSON.parse(document.getElementById('viewer-data').textContent);
  const notice = document.getElementById('viewer-notice');
  const box = document.getElementById('viewer');
  function say(text) { notice.textContent = text; notice.hidden = false; }
  if (!document.createElement('canvas').getContext('webgl2') || typeof niivue === 'undefined') {
    box.hidden = true; say(data.no_webgl); return;
  }
  const readout = document.getElementById('viewer-slice');
  const nv = new niivue.Niivue({backColor: [0, 0, 0, 1], show3Dcrosshair: true, isColorbar: false,
                                multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS});
  window.bonemetViewer = nv;
  function show(vox, mm, hu) {
    const k = Math.round(vox[2]);
    readout.dataset.slice = String(k);
    readout.textContent = (k + 1) + ' / ' + data.slices;
    document.getElementById('viewer-mm').textContent = Array.from(mm).slice(0, 3).map(v => v.toFixed(1)).join(', ');
    document.getElementById('viewer-hu').textContent = (hu === undefined || hu === null) ? '-' : String(Math.round(hu));
  }
  nv.onLocationChange = function (d) { show(d.vox, d.mm, d.values && d.values.length ? d.values[0].value : null); };
  function moveTo(vox) {
    nv.scene.crosshairPos = nv.vox2frac(vox);
    nv.updateGLVolume();
    show(vox, nv.frac2mm(nv.scene.crosshairPos), nv.volumes[0].getValue(vox[0], vox[1], vox[2]));
  }
  function setWindow(lo, hi) {
    document.getElementById('viewer-min').value = lo; document.getElementById('viewer-max').value = hi;
    nv.volumes[0].cal_min = lo; nv.volumes[0].cal_max = hi; nv.updateGLVolume();
  }
  (async function () {
    await nv.attachTo('viewer-canvas');
    const ct = await niivue.NVImage.loadFromBase64({base64: data.layers.ct, name: 'ct.nii.gz',
                                                    cal_min: data.window[0], cal_max: data.window[1]});
    nv.addVolume(ct);
    const index = {};
    for (const layer of data.overlays) {
      const img = await niivue.NVImage.loadFromBase64({base64: data.layers[layer.name], name: layer.name + '.nii.gz',
        colormap: layer.colormap, opacity: layer.shown ? layer.opacity : 0, cal_min: layer.cal_min,
        cal_max: layer.cal_max});
      nv.addVolume(img);
      index[layer.name] = nv.volumes.length - 1;
      const show = document.getElementById('show-' + layer.name), op = document.getElementById('opacity-' + layer.name);
      const apply = () => nv.setOpacity(index[layer.name], show.checked ? parseFloat(op.value) : 0);
      show.addEventListener('change', apply); op.addEventListener('input', apply);
    }
    nv.setSliceType(nv.sliceTypeMultiplanar);
    setWindow(data.window[0], data.window[1]);
    document.getElementById('viewer-view').addEventListener('change', e => nv.setSliceType(parseInt(e.target.value)));
    document.getElementById('viewer-window').addEventListener('change', e => {
      const [lo, hi] = e.target.value.split(',').map(Number); setWindow(lo, hi); });
    for (const id of ['viewer-min', 'viewer-max']) {
      document.getElementById(id).addEventListener('change', () => setWindow(
        parseFloat(document.getElementById('viewer-min').value), parseFloat(document.getElementById('viewer-max').value)));
    }
    for (const row of document.querySelectorAll('tr[data-vox]')) {
      row.addEventListener('click', () => moveTo(row.dataset.vox.split(' ').map(Number)));
    }
    const asked = location.hash.match(/^#lesion-(\d+)$/);
    const row = asked && document.querySelector("tr[data-lesion='" + asked[1] + "']");
    if (row) { row.click(); } else { moveTo(data.start); }
    box.dataset.ready = 'true';
  })().catch(function (e) { box.hidden = true; say('The viewer could not open this scan: ' + e); console.error(e); });
})();"""


def viewer_section(scan, labels: np.ndarray | None, bone: np.ndarray | None, probability: np.ndarray | None,
                   lesions: list, max_mb: float = DEFAULT_MAX_MB) -> tuple[str, str, dict[int, str]]:
    """(HTML of the viewer, to go in the body; the CSS it needs; each lesion's key voxel in the viewer's voxel
    numbers, for the rows of the lesion table), or a note and no CSS when the scan has no volume (image slices)
    or its images pass ``max_mb``."""
    if scan.volume is None:
        return ("<p class='note'>Image slices carry no geometry: the interactive viewer needs a DICOM series or a "
                "NIfTI volume; the key slices below show the findings.</p>", "", {})
    # the int16 bytes as base64, about the most the CT can take: only a CT that could pass the limit is estimated
    if scan.volume.array.size * 2 * 4 / 3 / 1e6 > max_mb:
        estimate = estimated_ct_mb(scan.volume)
        if estimate > CLEARLY_OVER * max_mb:
            return left_out(f"about {estimate:.0f}", max_mb), "", {}
    layers, grid = viewer_layers(scan.volume, labels, bone, probability)
    size = payload_mb(layers)
    if size > max_mb:
        return left_out(f"{size:.0f}", max_mb), "", {}
    key_voxels = {les.id: grid.voxel((les.centroid_voxel[0], les.centroid_voxel[1], les.key_slice)) for les in lesions}
    overlays = [{"name": name, "colormap": cmap, "opacity": op, "shown": shown, "cal_min": 0.5 if name != "probability"
                 else 50, "cal_max": 1 if name != "probability" else 100}
                for name, _, cmap, op, shown in LAYERS if name in layers]
    key = max(lesions, key=lambda les: les.max_probability) if lesions else None
    start = key_voxels[key.id] if key is not None else grid.voxel([s // 2 for s in scan.volume.shape])
    data = {"layers": layers, "overlays": overlays, "window": list(WINDOWS["bone"]), "slices": scan.n_slices,
            "start": start, "no_webgl": NO_WEBGL}
    controls = CONTROLS.format(
        windows="".join(f"<option value='{lo},{hi}'>{html.escape(name)}</option>" for name, (lo, hi) in WINDOWS.items()),
        layers="".join(LAYER_CONTROL.format(name=name, label=label, opacity=op, checked="checked" if shown else "")
                       for name, label, _, op, shown in LAYERS if name in layers))
    body = (f"<h2>Viewer</h2><p id='viewer-notice' class='note' hidden></p><div id='viewer'>{controls}"
            f"<div id='viewer-box'><canvas id='viewer-canvas'></canvas></div>"
            "<div id='viewer-readout'>slice <span id='viewer-slice' data-slice=''>-</span> · "
            "<span id='viewer-mm'>-</span> mm (RAS) · <span id='viewer-hu'>-</span> HU</div>"
            "<p class='note'>Click a row of the lesion table to go to that lesion; click or drag in a view to move "
            f"the crosshair. {size:.1f} MB of images embedded. Drawn by NiiVue "
            f"{html.escape(niivue_version())} (BSD-2-Clause).</p></div>"
            f"<script type='application/json' id='viewer-data'>{json_for_script(data)}</script>"
            f"<script>{niivue_js()}</script><script>{SCRIPT}</script>")
    return body, CSS, {k: " ".join(map(str, v)) for k, v in key_voxels.items()}
