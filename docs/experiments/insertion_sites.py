"""The HU rule that places inserted lesions in real CT without a bone mask (``bonemet/data/bone.py``), checked: NOT
part of bonemet.

On the two real series with TotalSegmentator bone masks: the rule's mask against theirs (precision, recall), and
60 lesions inserted through the rule (10 seeds x 6, 5-45 mm) with their centre in TotalSegmentator's bone and
with at least 70 % of their voxels in it. On the other real series (no mask): the rule's volume, and an overlay
per series (``OUT/sites-*.png``, four slices each) to look at.

    .venv/bin/python docs/experiments/insertion_sites.py [OUT]      # about a minute
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bonemet.data.bone import insertion_bone_mask
from bonemet.data.ct import read_volume
from bonemet.data.volume import read_mask_like
from bonemet.markdown import markdown_table
from bonemet.phantom.lesions import insert_lesions

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MASKED = [("real_ct/chest_abdomen_dicom", "real_ct/chest_abdomen_dicom_bone_mask.nii.gz"),
          ("real_ct/abdomen_3mm_ct.nii.gz", "real_ct/abdomen_3mm_bone_mask.nii.gz")]
OTHERS = ["real_ct_more/lung-pet-ct-dx/A0001_ct", "real_ct_more/lung-pet-ct-dx/A0002_ct",
          "real_ct_more/acrin-flt-breast-001/study_19600104_abdomen_pelvis",
          "real_ct_more/ibsi-sts-001/CT_image.nii.gz"]


def overlay(vol, mask: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.linspace(0, vol.shape[2] - 1, 6).astype(int)[1:5]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, k in zip(axes, ks):
        grey = np.clip((vol.array[:, :, k] + 200) / 1200, 0, 1)
        rgb = np.stack([grey] * 3, -1)
        rgb[mask[:, :, k]] = rgb[mask[:, :, k]] * 0.4 + [0.6, 0, 0]
        ax.imshow(np.transpose(rgb, (1, 0, 2)))
        ax.set_title(f"slice {k}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for ct, bone in MASKED:
        vol = read_volume(SHARED / ct)
        truth = read_mask_like(SHARED / bone, vol)
        sites = insertion_bone_mask(vol)
        centre, mostly = [], []
        for seed in range(10):
            _, labels, infos = insert_lesions(vol.array, sites, vol.spacing, np.random.default_rng([seed, 10000]), 6,
                                              diameter_range=(5, 45))
            for info in infos:
                m = labels == info.lesion_id
                centre.append(bool(truth[info.center_voxel]))
                mostly.append((m & truth).sum() / m.sum() >= 0.7)
        both = (sites & truth).sum()
        rows.append({"series": ct, "pixel mm": f"{vol.spacing[0]:.2f}", "rule mL": round(
            float(sites.sum() * np.prod(vol.spacing) / 1000), 1), "precision": round(float(both / sites.sum()), 3),
            "recall": round(float(both / truth.sum()), 3), "lesions": len(centre),
            "centre in bone %": round(100 * float(np.mean(centre)), 1),
            ">= 70 % in bone %": round(100 * float(np.mean(mostly)), 1)})
    for ct in OTHERS:
        vol = read_volume(SHARED / ct)
        sites = insertion_bone_mask(vol)
        overlay(vol, sites, out / f"sites-{Path(ct).parent.name}-{Path(ct).name.split('.')[0]}.png")
        rows.append({"series": ct, "pixel mm": f"{vol.spacing[0]:.2f}",
                     "rule mL": round(float(sites.sum() * np.prod(vol.spacing) / 1000), 1)})
    print(markdown_table(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/insertion-sites"))
