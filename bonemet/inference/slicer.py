"""``segmentation.seg.nrrd``: the lesion and bone masks as one 3D Slicer segmentation (a labelmap NRRD whose
header names each segment, its colour and its label value), written with pynrrd. Slicer opens it with its
segment names and colours; ``lesion_mask.nii.gz`` and ``lesions_seg.dcm`` open there too."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
SEGMENTS = (("bone", "0.25 0.55 1.0"), ("lesion", "1.0 0.1 0.1"))  # label 1 and 2: a lesion voxel is labelled lesion


def write_seg_nrrd(path: Path, affine: np.ndarray, lesion: np.ndarray, bone: np.ndarray | None) -> Path:
    """Write the masks (arrays on the voxel-to-RAS ``affine``'s grid) as a Slicer segmentation."""
    import nrrd

    labels = np.zeros(lesion.shape, np.uint8)
    names = []
    for value, (name, colour) in enumerate(SEGMENTS, start=1):
        mask = lesion if name == "lesion" else bone
        if mask is None:
            continue
        labels[np.asarray(mask) > 0] = value
        names.append((value, name, colour))
    lps = RAS_TO_LPS @ np.asarray(affine, float)[:3]
    extent = " ".join(f"0 {n - 1}" for n in labels.shape)
    header = {"type": "unsigned char", "encoding": "gzip", "space": "left-posterior-superior",
              "space directions": lps[:, :3].T, "space origin": lps[:, 3], "kinds": ["domain"] * 3}
    for i, (value, name, colour) in enumerate(names):
        header.update({f"Segment{i}_ID": name, f"Segment{i}_Name": name, f"Segment{i}_Color": colour,
                       f"Segment{i}_LabelValue": str(value), f"Segment{i}_Layer": "0",
                       f"Segment{i}_Extent": extent})
    nrrd.write(str(path), labels, header, custom_field_map={k: "string" for k in header if k.startswith("Segment")})
    return path
