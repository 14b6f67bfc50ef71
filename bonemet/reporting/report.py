"""A self-contained HTML report (images embedded as base64 PNG): verdict, lesion table, key-slice overlays.

No patient name, ID or birth date appears unless ``phi`` is given (``--include-phi``); the input path is
left out too, because folder names often carry them.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from ..evaluation.figures import plt
from ..evaluation.metrics import LOCALISED_SHARE
from ..fileio import write_text
from .viewer import DEFAULT_MAX_MB, viewer_section

MAX_KEY_SLICES = 6
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}.verdict{font-size:1.3em;padding:.6em 1em;border-radius:6px;display:inline-block}
.pos{background:#fde2e1;color:#8a1010}.neg{background:#e3f4e4;color:#145a1c}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0}figcaption{font-size:.8em;color:#555}
.note{font-size:.8em;color:#666}"""


def truth_in_words(t: dict) -> str:
    """A lesion match against a truth mask (``summary["truth"]``) in one line, for the terminal and the report."""
    return (f"{t['found']} of {t['true_lesions']} lesions found, {t['found_localised']} by a localised finding "
            f"({LOCALISED_SHARE:.0%} of it or more in true lesions); {t['false_positive_lesions']} false positive "
            f"lesion(s), {t['off_target_lesions']} finding(s) off target")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def overlay(image: np.ndarray, lesion: np.ndarray, bone: np.ndarray | None, title: str) -> str:
    """A slice with the lesion in red and the bone outlined; arrays are (rows, cols)."""
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    if bone is not None and bone.any():
        ax.contour(bone.astype(float), levels=[0.5], colors="#3fa7ff", linewidths=0.6)
    if lesion.any():
        from matplotlib.colors import ListedColormap

        ax.imshow(np.ma.masked_where(~lesion, lesion), cmap=ListedColormap(["red"]), alpha=0.45, vmin=0, vmax=1)
        ax.contour(lesion.astype(float), levels=[0.5], colors="red", linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return _png(fig)


def _profile(slice_rows: list[dict]) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 2.2))
    k = [r["slice"] for r in slice_rows]
    ax.plot(k, [r["segmentation probability"] for r in slice_rows], label="segmentation (max lesion probability)")
    if slice_rows and "classifier probability" in slice_rows[0]:
        ax.plot(k, [r["classifier probability"] for r in slice_rows], label="classifier")
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set(xlabel="slice", ylabel="probability", ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def _table(rows: list[dict], columns: list[tuple[str, str]], row_attrs: list[str] | None = None) -> str:
    """An HTML table of ``rows`` (every value escaped); ``row_attrs``: attributes of each row's ``<tr>``."""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    attrs = row_attrs or [""] * len(rows)
    body = "".join(f"<tr{a}>" + "".join(f"<td>{html.escape(str(r.get(key, '')))}</td>" for key, _ in columns)
                   + "</tr>" for r, a in zip(rows, attrs))
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(path: Path, scan, summary: dict, lesions: list, kept: np.ndarray, bone: np.ndarray | None,
                 slice_rows: list[dict], phi: dict | None = None, probability: np.ndarray | None = None,
                 viewer: bool = True, viewer_max_mb: float = DEFAULT_MAX_MB) -> Path:
    """Write ``report.html`` for one predicted scan; ``viewer``: with the interactive viewer (``viewer.py``) unless
    its images pass ``viewer_max_mb``."""
    positive = summary["verdict"] == "metastatic"
    hu = scan.has_hu
    view_html, view_css, key_voxels = (viewer_section(scan, kept, bone, probability, lesions, viewer_max_mb)
                                       if viewer else ("", "", {}))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'><title>bonemet report</title>"
             f"<style>{CSS}{view_css}</style></head><body>", "<h1>bonemet: bone metastasis CAD report</h1>",
             f"<div class='verdict {'pos' if positive else 'neg'}'>{html.escape(summary['verdict'])} "
             f"(probability {summary['probability']:.2f})</div>",
             "<p class='note'>Research software, not a medical device: every finding needs a radiologist's review.</p>"]
    if phi:
        parts.append(_table([phi], [(k, k) for k in phi]))
    inp = summary["input"]
    facts = [("input", f"{inp['kind']}, {inp['slices']} slices of {inp['slice_shape'][0]} x {inp['slice_shape'][1]}"),
             ("lesions", str(summary["lesions"])),
             ("slices with lesion", str(summary["lesion_slices"])),
             ("total lesion volume", f"{summary['total_lesion_volume_ml']} mL" if hu else "n/a (no spacing in images)"),
             ("by type", ", ".join(f"{k}: {v}" for k, v in summary["lesions_by_type"].items()) or "-"),
             ("by site", ", ".join(f"{k}: {v}" for k, v in summary["lesions_by_site"].items()) or "-"),
             ("evidence", ", ".join(f"{k} {v:.2f}" for k, v in summary["evidence"].items())),
             ("segmentation model", summary["models"]["segmentation"]["model"])]
    if summary["models"]["classification"]:
        facts.append(("classifier", summary["models"]["classification"]["model"]))
    if summary.get("truth"):
        facts.append(("against the given truth", truth_in_words(summary["truth"])))
    parts.append("<h2>Summary</h2>" + _table([dict(facts)], [(k, k) for k, _ in facts]))
    for w in summary.get("warnings", []):
        parts.append(f"<p class='note'>warning: {html.escape(w)}</p>")
    parts.append("<h2>Lesions</h2>")
    if lesions:
        cols = [("id", "id"), ("slice_start", "first slice"), ("slice_end", "last slice")]
        cols += ([("volume_ml", "volume (mL)"), ("diameter_mm", "largest axial diameter (mm)"), ("mean_hu", "mean HU"),
                  ("max_hu", "max HU"), ("type", "type"), ("site", "rough site")] if hu else
                 [("area_px_max", "largest area (pixels)")])
        cols += [("max_probability", "max probability")]
        links = ([f" data-lesion='{les.id}' data-slice='{les.key_slice}' data-vox='{key_voxels[les.id]}'"
                  for les in lesions] if key_voxels else None)
        parts.append(_table([les.as_row() for les in lesions], cols, links))
        if not hu:
            parts.append("<p class='note'>Image slices carry no HU and no spacing: volume, diameter, HU and "
                         "lytic / blastic type are not available.</p>")
    else:
        parts.append("<p>No lesion kept (components smaller than the minimum size are ignored).</p>")
    parts.append(view_html)
    parts.append("<h2>Key slices</h2><p class='note'>Lesion in red, bone outline in blue.</p><div class='grid'>")
    shown = []
    for les in lesions[:MAX_KEY_SLICES]:
        if les.key_slice in shown:
            continue
        shown.append(les.key_slice)
        k = les.key_slice
        img = scan.display_slice(k)
        uri = overlay(img, kept[:, :, k].T > 0, bone[:, :, k].T if bone is not None else None,
                      f"lesion {les.id}: {scan.slice_label(k)}")
        parts.append(f"<figure><img alt='lesion {les.id}' src='{uri}'><figcaption>lesion {les.id}, "
                     f"{les.type}, {les.site}</figcaption></figure>")
    if not shown and scan.n_slices:
        k = int(np.argmax([r["segmentation probability"] for r in slice_rows]))
        uri = overlay(scan.display_slice(k), kept[:, :, k].T > 0, bone[:, :, k].T if bone is not None else None,
                      f"most suspicious: {scan.slice_label(k)}")
        parts.append(f"<figure><img alt='most suspicious slice' src='{uri}'></figure>")
    parts.append("</div><h2>Along the scan</h2>")
    parts.append(f"<img alt='slice probabilities' src='{_profile(slice_rows)}'>")
    v = summary["versions"]
    parts.append(f"<p class='note'>bonemet {v['bonemet']}, torch {v['torch']}, timm {v['timm']}; "
                 f"rule: {html.escape(summary['rule'])}; timings (s): "
                 f"{html.escape(', '.join(f'{k} {t}' for k, t in summary['timings'].items()))}.</p></body></html>")
    write_text(path, "\n".join(parts))
    return path
