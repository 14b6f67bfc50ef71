"""A parametric torso CT phantom in Hounsfield units, rendered slice by slice.

Numbers follow measurements on real CT (``shared/docs/ct-reference-stats.md``): fat about -95 HU,
muscle 30-50, liver 45-55 (+50 with contrast), lungs about -850, vertebral bodies with a thin
cortical shell (90th percentile about 650 HU) around trabecular bone of 100-250 HU, ribs with a
median about 200 HU. The scan runs from the mid thorax to the proximal femurs so that lesions can
sit in vertebrae, ribs, pelvis and long bones (``thighs``: on to mid-thigh, femoral shafts with the thick,
fully dense cortex that the other bones lack). Benign look-alikes named by the thesis are built in:
intervertebral discs (60-100 HU where the vertebral body was), end-plate sclerosis and osteophytes.

Images are drawn in display orientation: rows run anterior to posterior, columns from the
patient's right to left (x in mm grows to the patient's left, y to the back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .lesions import SITES

SITE_LABEL = {name: lab for lab, name in SITES.items()}
CORTEX_PV = 0.5
TRAB_TEX = 6.0


@dataclass
class PatientParams:
    """Everything random about one phantom patient, drawn once from the patient's rng."""

    patient_id: str
    sex: str
    age: int
    status: str  # healthy / metastatic
    primary: str  # primary tumour, "none" for healthy patients
    contrast: bool
    body_scale: float
    length_mm: float
    fat_mm: float
    marrow_hu: float
    cortex_hu: float
    noise_sigma: float
    blood_hu: float
    endplate_sclerosis: bool
    osteophytes: bool
    n_bone_islands: int
    seed_anatomy: int
    extra: dict[str, Any] = field(default_factory=dict)


class Canvas:
    """Pixel-centre coordinates (mm) of one slice, and cheap shape masks on them."""

    def __init__(self, size: int, fov_mm: float) -> None:
        self.size = size
        self.px = fov_mm / size
        coords = (np.arange(size) - size / 2 + 0.5) * self.px
        self.x = coords[None, :]  # columns: + = patient's left
        self.y = coords[:, None]  # rows: + = posterior

    def _box(self, cx: float, cy: float, r: float) -> tuple[slice, slice]:
        c0 = int(max(0, np.floor((cx - r) / self.px + self.size / 2 - 1)))
        c1 = int(min(self.size, np.ceil((cx + r) / self.px + self.size / 2 + 1)))
        r0 = int(max(0, np.floor((cy - r) / self.px + self.size / 2 - 1)))
        r1 = int(min(self.size, np.ceil((cy + r) / self.px + self.size / 2 + 1)))
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def ellipse(self, cx: float, cy: float, a: float, b: float, angle_deg: float = 0.0, power: float = 2.0) -> np.ndarray:
        """Filled (super-)ellipse with semi-axes a (along the rotated x) and b."""
        out = np.zeros((self.size, self.size), bool)
        if a <= 0 or b <= 0:
            return out
        rs, cs = self._box(cx, cy, max(a, b))
        if rs.stop <= rs.start or cs.stop <= cs.start:
            return out
        dx, dy = self.x[:, cs] - cx, self.y[rs, :] - cy
        t = np.deg2rad(angle_deg)
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        out[rs, cs] = np.abs(u / a) ** power + np.abs(v / b) ** power <= 1.0
        return out


# ---------------------------------------------------------------------------------------------
# Patients
# ---------------------------------------------------------------------------------------------
PRIMARIES = {"lung": 8, "breast": 6, "prostate": 2, "kidney": 1, "stomach": 1, "liver": 1, "other": 4}
LESION_TYPE_BY_PRIMARY = {  # lytic, blastic, mixed
    "lung": (0.6, 0.15, 0.25), "breast": (0.35, 0.3, 0.35), "prostate": (0.05, 0.8, 0.15),
    "kidney": (0.9, 0.0, 0.1), "stomach": (0.4, 0.35, 0.25), "liver": (0.8, 0.05, 0.15),
    "other": (0.5, 0.25, 0.25),
}


def draw_patient(patient_id: str, status: str, rng: np.random.Generator) -> PatientParams:
    """Draw a patient like the thesis dataset: men 59 +- 15 years, women 54 +- 13, primaries as in BM-Seg."""
    primary = "none"
    if status == "metastatic":
        names = list(PRIMARIES)
        p = np.asarray([PRIMARIES[n] for n in names], float)
        primary = str(rng.choice(names, p=p / p.sum()))
    if primary == "breast":
        sex = "F"
    elif primary == "prostate":
        sex = "M"
    else:
        sex = "M" if rng.random() < 32 / 57 else "F"
    age = int(np.clip(rng.normal(59.0, 15.2) if sex == "M" else rng.normal(53.6, 13.1), 18, 90))
    scale = float(np.clip(rng.normal(1.0 if sex == "M" else 0.93, 0.07), 0.78, 1.18))
    # marrow density falls with age (osteopenia); women lose more after menopause
    marrow = 150.0 - 0.8 * (age - 40) - (12.0 if sex == "F" and age > 50 else 0.0) + rng.normal(0, 15)
    return PatientParams(
        patient_id=patient_id, sex=sex, age=age, status=status, primary=primary,
        contrast=bool(rng.random() < 0.7),
        body_scale=scale, length_mm=float(535.0 * np.clip(rng.normal(1.0, 0.05), 0.88, 1.12)),
        fat_mm=float(np.clip(rng.normal(16 if sex == "M" else 22, 6), 5, 40)),
        marrow_hu=float(np.clip(marrow, 95, 230)), cortex_hu=float(rng.uniform(1100, 1400)),
        noise_sigma=float(rng.uniform(10, 25)), blood_hu=float(rng.uniform(160, 260)),
        endplate_sclerosis=bool(age > 45 and rng.random() < 0.6), osteophytes=bool(age > 50 and rng.random() < 0.6),
        n_bone_islands=int(rng.choice([0, 1, 1, 2, 3])), seed_anatomy=int(rng.integers(2**31)),
    )


# ---------------------------------------------------------------------------------------------
# The spine along z
# ---------------------------------------------------------------------------------------------
@dataclass
class Segment:
    name: str  # e.g. T9, L2, or "disc T9/T10"
    kind: str  # body / disc
    top: float  # mm from the top of the scan
    bottom: float


def spine_segments(length_mm: float, rng: np.random.Generator) -> list[Segment]:
    """Vertebral bodies and discs from T6 to L5, scaled to the scan length, sacrum below."""
    levels = [f"T{i}" for i in range(6, 13)] + [f"L{i}" for i in range(1, 6)]
    scale = length_mm / 535.0
    segs: list[Segment] = []
    z = -rng.uniform(0, 20) * scale  # the scan starts somewhere in T6
    for i, name in enumerate(levels):
        lumbar = name.startswith("L")
        body = (27.0 if lumbar else 21.5) * scale * rng.uniform(0.95, 1.05)
        disc = (9.5 if lumbar else 5.5) * scale * rng.uniform(0.9, 1.1)
        segs.append(Segment(name, "body", z, z + body))
        z += body
        nxt = levels[i + 1] if i + 1 < len(levels) else "S1"
        segs.append(Segment(f"disc {name}/{nxt}", "disc", z, z + disc))
        z += disc
    segs.append(Segment("sacrum", "sacrum", z, length_mm + 50))
    return segs


def _segment_at(segs: list[Segment], d: float) -> Segment:
    for s in segs:
        if s.top <= d < s.bottom:
            return s
    return segs[-1]


def _window(t: float, t0: float, t1: float) -> float:
    """A smooth 0..1..0 profile over [t0, t1] (organ size along z)."""
    if t <= t0 or t >= t1:
        return 0.0
    return float(np.sin(np.pi * (t - t0) / (t1 - t0)) ** 0.5)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
@dataclass
class Rendered:
    """A phantom volume before lesions: (i, j, k) arrays, k = 0 the lowest slice."""

    hu: np.ndarray
    bone: np.ndarray
    site: np.ndarray
    disc: np.ndarray
    sclerosis: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    segments: list[Segment]


def render_patient(p: PatientParams, size: int = 256, n_slices: int = 96, fov_mm: float = 400.0,
                   thighs: bool = False) -> Rendered:
    """Render the healthy anatomy of patient ``p`` (no blur, no noise: see :func:`finish`). ``thighs``: the scan
    runs on below the hips to mid-thigh (``THIGH_REACH`` more of its length, at the same slice spacing when
    ``n_slices`` grows by as much); the slices of the torso are the same either way."""
    rng = np.random.default_rng(p.seed_anatomy)
    canvas = Canvas(size, fov_mm)
    length = p.length_mm * (1.0 + THIGH_REACH) if thighs else p.length_mm
    dz = length / n_slices
    thigh = draw_thighs(p) if thighs else None
    segs = spine_segments(p.length_mm, rng)
    rib_jitter = rng.normal(0, 4, size=(2, 12))
    bowel = [(rng.uniform(-0.6, 0.6), rng.uniform(-0.75, 0.1), rng.uniform(9, 22), rng.uniform(0.45, 0.7),
              rng.uniform(0.65, 0.95), rng.random() < 0.4, rng.uniform(0, 2 * np.pi)) for _ in range(10)]
    osteo_levels = {s.name for s in segs if s.kind == "body" and rng.random() < 0.4}
    sclerotic_levels = {s.name for s in segs if s.kind == "body" and rng.random() < 0.5}
    shape = (size, size, n_slices)
    hu = np.zeros(shape, np.float32)
    bone = np.zeros(shape, bool)
    site = np.zeros(shape, np.uint8)
    disc = np.zeros(shape, bool)
    scler = np.zeros(shape, bool)
    for k in range(n_slices):
        d = length - (k + 0.5) * dz  # depth from the top: k = 0 is the most inferior slice
        if d > p.length_mm and thigh is not None:
            img, b, s, dm, sm = _render_thigh_slice(canvas, p, (d / p.length_mm - 1.0) / THIGH_REACH, thigh)
        else:
            img, b, s, dm, sm = _render_slice(canvas, p, d / p.length_mm, d, segs, rib_jitter, bowel,
                                              osteo_levels, sclerotic_levels, rng)
        hu[:, :, k], bone[:, :, k], site[:, :, k], disc[:, :, k], scler[:, :, k] = img.T, b.T, s.T, dm.T, sm.T
    lps = np.diag([canvas.px, canvas.px, dz, 1.0])
    lps[:3, 3] = [-fov_mm / 2 + canvas.px / 2, -fov_mm / 2 + canvas.px / 2, -length + dz / 2]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return Rendered(hu, bone, site, disc, scler, affine, (canvas.px, canvas.px, dz), segs)


def _blank_slice(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An n x n slice of air: its HU, and no bone, site, disc or sclerosis."""
    return (np.full((n, n), -1000.0, np.float32), np.zeros((n, n), bool), np.zeros((n, n), np.uint8),
            np.zeros((n, n), bool), np.zeros((n, n), bool))


def _render_slice(cv: Canvas, p: PatientParams, t: float, d: float, segs: list[Segment], rib_jitter: np.ndarray,
                  bowel: list, osteo_levels: set[str], sclerotic_levels: set[str], rng: np.random.Generator):
    n = cv.size
    s = p.body_scale
    img, bone, site, disc, scler = _blank_slice(n)
    pelvis_t = 0.70
    # body outline: wider and rounder at the pelvis
    a = 158 * s * (1.0 + 0.10 * _window(t, 0.62, 1.25))
    b = 108 * s * (1.0 + 0.06 * _window(t, 0.55, 1.0))
    body = cv.ellipse(0, 0, a, b, power=2.4)
    fat = p.fat_mm
    inner_a, inner_b = a - fat, b - fat
    img[body] = -95.0
    inner = cv.ellipse(0, 0, inner_a, inner_b, power=2.4)
    img[inner] = 42.0  # abdominal / chest wall muscle
    ca, cb = inner_a - 11 * s, inner_b - 10 * s  # inside the muscle wall
    cavity = cv.ellipse(0, 0, ca, cb, power=2.2)
    thorax = t < 0.40
    img[cavity] = -90.0 if not thorax else 35.0  # visceral fat below the diaphragm, mediastinum above
    contrast = p.contrast

    # spine geometry (shared by organs placed around it)
    vb_a, vb_b = (19 + 7 * min(1.0, t / 0.65)) * s, (14 + 4 * min(1.0, t / 0.65)) * s
    vb_y = cb - 52 * s - vb_b  # centre of the vertebral body
    canal_y = vb_y + vb_b + 9 * s
    seg = _segment_at(segs, d)

    # paraspinal muscles
    for side in (-1, 1):
        img[cv.ellipse(side * 27 * s, canal_y + 22 * s, 24 * s, 20 * s)] = 45.0

    if thorax:
        lung_shrink = 1.0 - 0.8 * max(0.0, (t - 0.28) / 0.12)
        for side in (-1, 1):
            top = 0.85 if side < 0 else 1.0  # the liver dome lifts the right lung
            la, lb = 0.40 * ca * lung_shrink * (top if t > 0.28 else 1), 0.78 * cb * lung_shrink
            lung = cv.ellipse(side * 0.5 * ca, -0.02 * cb, la, lb, angle_deg=side * 8) & cavity
            lung &= ~cv.ellipse(0, vb_y, vb_a + 14 * s, vb_b + 30 * s)
            img[lung] = -850.0 + 40 * rng.standard_normal(lung.sum())
            for _ in range(14):  # pulmonary vessels
                vx = side * 0.5 * ca + rng.uniform(-0.7, 0.7) * la
                vy = rng.uniform(-0.7, 0.7) * lb
                img[cv.ellipse(vx, vy, rng.uniform(1.5, 4), rng.uniform(1.5, 4)) & lung] = -40.0 + (150 if contrast else 0)
        hw = _window(t, 0.08, 0.40)
        if hw > 0:
            heart = cv.ellipse(0.18 * ca, -0.30 * cb, 0.36 * ca * hw, 0.42 * cb * hw, angle_deg=-25) & cavity
            img[heart] = 110.0 if contrast else 42.0
            img[cv.ellipse(0.2 * ca, -0.3 * cb, 0.22 * ca * hw, 0.26 * cb * hw, -25) & heart] = p.blood_hu if contrast else 40.0
        if 0.05 < t < 0.34:  # sternum (other)
            st = cv.ellipse(0, -cb + 6 * s, 14 * s, 6 * s)
            _paint_bone(img, bone, site, st, SITE_LABEL["other"], p, 1.2, cv.px)
        if t < 0.18:  # scapulae, behind the ribs (other)
            for side in (-1, 1):
                sc = cv.ellipse(side * 0.62 * ca, 0.55 * cb + 14 * s, 48 * s, 4.5 * s, angle_deg=side * -30)
                _paint_bone(img, bone, site, sc, SITE_LABEL["other"], p, 1.2, cv.px)
    else:
        lw = _window(t, 0.26, 0.60)
        if lw > 0:  # liver, patient's right (negative x)
            liver = cv.ellipse(-0.38 * ca, -0.08 * cb, 0.55 * ca * lw, 0.75 * cb * lw, angle_deg=15) & cavity
            img[liver] = 52.0 + (50 if contrast else 0)
        sw = _window(t, 0.36, 0.50)
        if sw > 0:  # spleen and stomach, left
            img[cv.ellipse(0.62 * ca, 0.30 * cb, 0.22 * ca * sw, 0.32 * cb * sw, -30) & cavity] = 42.0 + (50 if contrast else 0)
            st = cv.ellipse(0.35 * ca, -0.45 * cb, 0.28 * ca * sw, 0.25 * cb * sw) & cavity
            img[st] = 20.0
            img[st & (cv.y < -0.45 * cb - 0.05 * cb)] = -950.0  # gas cap
        kw = _window(t, 0.42, 0.62)
        if kw > 0:
            for side in (-1, 1):
                kid = cv.ellipse(side * 62 * s, vb_y + 4 * s, 26 * s * kw, 38 * s * kw, angle_deg=side * 30) & cavity
                img[kid] = 150.0 if contrast else 30.0
        for bx, by, br, t0, t1, gas, ph in bowel:
            if t0 < t < t1:
                cx = bx * ca * 0.8 + 12 * np.sin(ph + 18 * t)
                cy = by * cb * 0.8 + 10 * np.cos(ph + 14 * t)
                loop = cv.ellipse(cx, cy, br * s, br * s * 0.8) & cavity
                loop &= ~cv.ellipse(0, vb_y, vb_a + 8, vb_b + 8)
                img[loop] = 35.0 + (30 if contrast else 0)
                img[cv.ellipse(cx, cy, br * s - 2.5, br * s * 0.8 - 2.5) & loop] = -900.0 if gas else 15.0
        if t > 0.85:  # bladder
            img[cv.ellipse(0, -0.45 * cb, 42 * s * _window(t, 0.85, 1.1), 30 * s) & cavity] = 10.0
        if 0.5 < t < 0.92:  # psoas
            pw = min(1.0, (t - 0.5) / 0.15)
            for side in (-1, 1):
                img[cv.ellipse(side * (vb_a + 15 * s * pw), vb_y - 2, 14 * s * pw + 3, 16 * s * pw + 3)] = 45.0

    # great vessels
    ao_x, ao_y = 16 * s, vb_y - vb_b - 13 * s
    if t < 0.66:
        img[cv.ellipse(ao_x, ao_y, 12 * s, 12 * s)] = p.blood_hu if contrast else 42.0
        if t > 0.34:
            img[cv.ellipse(-24 * s, ao_y + 2, 11 * s, 9 * s)] = (p.blood_hu - 40) if contrast else 38.0
    elif t < 0.85:
        for side in (-1, 1):
            img[cv.ellipse(side * (14 + 60 * (t - 0.66)) * s, ao_y + 4, 7 * s, 7 * s)] = p.blood_hu if contrast else 42.0

    # ---- bones ----
    spine_site = SITE_LABEL["spine"]
    if seg.kind in ("body", "disc"):
        if seg.kind == "body":
            vb = cv.ellipse(0, vb_y, vb_a, vb_b, power=2.3)
            vb &= ~cv.ellipse(0, vb_y + vb_b + 4 * s, 9 * s, 7 * s)  # posterior concavity
            _paint_bone(img, bone, site, vb, spine_site, p, 1.0, cv.px)
            near_end = min(d - seg.top, seg.bottom - d)
            if near_end < 3.5 * p.length_mm / 535 and p.endplate_sclerosis and seg.name in sclerotic_levels:
                sc = vb & cv.ellipse(rng.uniform(-0.4, 0.4) * vb_a, vb_y, vb_a * 0.8, vb_b * 0.7)
                img[sc] = np.maximum(img[sc], rng.uniform(450, 700))
                scler |= sc
            if near_end < 5.0 and p.osteophytes and seg.name in osteo_levels:
                for side in (-1, 1):
                    ost = cv.ellipse(side * vb_a * 0.92, vb_y - vb_b * 0.55, 5 * s, 3 * s, angle_deg=side * 40)
                    ost &= ~bone
                    _paint_bone(img, bone, site, ost, spine_site, p, 1.0, cv.px, marrow=550.0)
        else:  # intervertebral disc: soft tissue where the body was (the lytic look-alike)
            dm = cv.ellipse(0, vb_y, vb_a * 1.03, vb_b * 1.03, power=2.3)
            img[dm] = rng.uniform(65, 95)
            img[cv.ellipse(0, vb_y, vb_a * 0.55, vb_b * 0.5) & dm] = rng.uniform(70, 100)  # nucleus
            disc |= dm
        # posterior elements: pedicles, lamina and spinous process around the canal
        arch = cv.ellipse(0, canal_y, 15 * s, 13 * s) & ~cv.ellipse(0, canal_y, 8.5 * s, 7.5 * s)
        arch &= cv.y > vb_y + vb_b - 1  # do not overlap the body
        if seg.kind == "disc":
            arch &= cv.y > canal_y  # facet joints only
        arch |= cv.ellipse(0, canal_y + 22 * s, 4 * s, 12 * s)
        tp = 0.9 if t > 0.4 else 0.6
        for side in (-1, 1):
            arch |= cv.ellipse(side * 24 * s * tp, canal_y + 2 * s, 13 * s * tp, 4.5 * s, angle_deg=side * 12)
        arch &= ~bone
        _paint_bone(img, bone, site, arch, spine_site, p, 1.2, cv.px)
        img[cv.ellipse(0, canal_y, 8 * s, 7 * s) & ~bone] = 12.0  # spinal canal (CSF)
    else:  # sacrum
        sw_ = 1.0 - 0.5 * (t - pelvis_t) / 0.2
        sac = cv.ellipse(0, vb_y + 8 * s, 48 * s * sw_, 20 * s * sw_, power=2.2)
        sac &= ~cv.ellipse(0, vb_y + 8 * s, 7 * s, 5 * s)
        for side in (-1, 1):
            sac &= ~cv.ellipse(side * 20 * s * sw_, vb_y + 6 * s, 4 * s, 4 * s)  # sacral foramina
        _paint_bone(img, bone, site, sac, SITE_LABEL["pelvis"], p, 1.2, cv.px)

    if t < 0.48:  # ribs around the cage; the anterior ones end first (costal cartilage)
        ra, rb = ca + 3 * s, cb + 3 * s
        for side in (0, 1):
            sgn = 1 if side else -1
            n_ribs = 9
            for i, phi0 in enumerate(np.linspace(-70, 82, n_ribs)):
                phi = phi0 + rib_jitter[side, i] + 25 * (t % 0.07) / 0.07 - 12
                if t > 0.30 and phi < -20 + 200 * (t - 0.30):
                    if phi < -10:  # costal cartilage: not bone
                        ph = np.deg2rad(phi)
                        img[cv.ellipse(sgn * ra * np.cos(ph), rb * np.sin(ph), 6 * s, 4 * s, angle_deg=sgn * phi + 90)] = 105.0
                    continue
                ph = np.deg2rad(phi)
                cx, cy = sgn * ra * np.cos(ph), rb * np.sin(ph)
                rib = cv.ellipse(cx, cy, 7.0 * s, 4.3 * s, angle_deg=sgn * phi + 90 if sgn > 0 else -phi + 90)
                rib &= ~bone
                _paint_bone(img, bone, site, rib, SITE_LABEL["rib"], p, 1.3, cv.px, marrow=p.marrow_hu - 40)

    if t > 0.64:  # pelvis
        pelvis = SITE_LABEL["pelvis"]
        if t < 0.86:  # iliac wings
            g = (t - 0.64) / 0.22
            for side in (-1, 1):
                il = cv.ellipse(side * (0.50 - 0.08 * g) * ca, vb_y - 8 * s - 30 * g * s, (40 - 8 * g) * s,
                                (6 + 8 * g) * s, angle_deg=side * (-55 + 20 * g))
                il &= ~bone
                _paint_bone(img, bone, site, il, pelvis, p, 1.6, cv.px, marrow=p.marrow_hu - 15)
        hx = 0.52 * ca
        if 0.84 < t < 0.95:  # acetabula and femoral heads
            for side in (-1, 1):
                hr = 21 * s * _window(t, 0.83, 0.97)
                head = cv.ellipse(side * hx, -0.05 * cb, hr, hr)
                _paint_bone(img, bone, site, head, SITE_LABEL["long bone"], p, 1.5, cv.px, marrow=p.marrow_hu + 15)
                ac = cv.ellipse(side * (hx - 6 * s), -0.05 * cb + 4, hr + 9 * s, hr + 8 * s) & ~cv.ellipse(side * hx, -0.05 * cb, hr + 2.5, hr + 2.5)
                ac &= ~bone & (side * cv.x < hx + 4 * s)
                _paint_bone(img, bone, site, ac, pelvis, p, 1.6, cv.px, marrow=p.marrow_hu - 10)
        if t > 0.93:  # femoral necks and shafts (long bone), pubis and ischium (pelvis)
            for side in (-1, 1):
                fx = side * (hx + 18 * s * min(1.0, (t - 0.93) / 0.05))
                fem = cv.ellipse(fx, -0.02 * cb, 17 * s, 15 * s)
                fem &= ~bone
                _paint_bone(img, bone, site, fem, SITE_LABEL["long bone"], p, 3.0, cv.px, marrow=p.marrow_hu - 30)
                pub = cv.ellipse(side * 22 * s, -0.72 * cb, 20 * s, 9 * s, angle_deg=side * 20) & ~bone
                _paint_bone(img, bone, site, pub, pelvis, p, 1.5, cv.px)
                isch = cv.ellipse(side * 0.40 * ca, 0.18 * cb, 14 * s, 10 * s) & ~bone
                _paint_bone(img, bone, site, isch, pelvis, p, 1.5, cv.px)
    img[~body] = -1000.0
    bone &= body
    site[~bone] = 0
    return img, bone, site, disc, scler


# ---------------------------------------------------------------------------------------------
# Below the hips: the thighs
# ---------------------------------------------------------------------------------------------
THIGH_REACH = 0.3  # a scan with thighs runs on for this fraction of the torso's length (about 160 mm): mid-thigh
SHAFT_TAPER = 0.3  # over this first part of the thigh the proximal femur becomes a shaft (cortex, fatty canal)


def slices_with_thighs(torso_slices: int) -> int:
    """The slices of a scan with thighs at the slice spacing of a scan of the torso alone in ``torso_slices``."""
    return round(torso_slices * (1 + THIGH_REACH))


def draw_thighs(p: PatientParams) -> dict[str, float]:
    """The femoral shafts of patient ``p``, from a generator of their own, so that the torso's draws (and images)
    do not change: the cortex of a long bone's shaft is thick and fully dense (1300-1800 HU, 4.5-7 mm; the
    phantom's other bones have thin shells that partial volume keeps near 650 HU), around a canal of fatty
    marrow (an adult's, -80 to -30 HU)."""
    rng = np.random.default_rng([p.seed_anatomy, 1])
    return {"cortex_hu": float(rng.uniform(1300, 1800)), "cortex_mm": float(rng.uniform(4.5, 7.0)),
            "canal_hu": float(rng.uniform(-80, -30)), "radius_mm": float(rng.uniform(12.5, 15.0)),
            "septum_deg": float(rng.uniform(-30, 30))}


def _render_thigh_slice(cv: Canvas, p: PatientParams, u: float, thigh: dict[str, float]):
    """One axial slice ``u`` of the way (0..1) from the hips to mid-thigh: two thighs of fat and muscle, joined at
    the top, each with its femoral shaft and femoral vessels."""
    n = cv.size
    s = p.body_scale
    img, bone, site, disc, scler = _blank_slice(n)
    body = np.zeros((n, n), bool)
    w = min(1.0, u / SHAFT_TAPER)  # 0: the proximal femur of the hips' slices; 1: a shaft
    marrow = p.marrow_hu - 30  # as the proximal femur's
    for side in (-1, 1):
        cx, a, b = side * (80 + 10 * u) * s, (95 - 25 * u) * s, (85 - 15 * u) * s
        leg = cv.ellipse(cx, 5 * s, a, b, power=2.2)
        body |= leg
        img[leg & (img < -900)] = -95.0
        muscle = cv.ellipse(cx, 5 * s, a - 0.8 * p.fat_mm, b - 0.8 * p.fat_mm, power=2.2)
        img[muscle] = 45.0
        septum = cv.ellipse(cx - side * 20 * s, 30 * s, 30 * s, 1.5 * s, angle_deg=side * thigh["septum_deg"])
        img[septum & muscle] = -90.0  # fat between the muscle groups
        fx, fy = cx + side * (14 - 10 * u) * s, -8 * s
        for dx, dy, r, hu in ((-side * 24, -16, 4.0, p.blood_hu if p.contrast else 42.0),  # femoral artery
                              (-side * 30, -10, 5.5, (p.blood_hu - 40) if p.contrast else 38.0)):  # and vein
            img[cv.ellipse(fx + dx * s, fy + dy * s, r * s, r * s) & muscle] = hu
        r = thigh["radius_mm"] * s
        shaft = cv.ellipse(fx, fy, r, r)
        inner = r - (3.0 + w * (thigh["cortex_mm"] - 3.0)) * s  # the proximal femur's 3 mm shell thickens
        canal = cv.ellipse(fx, fy, inner, inner)
        img[shaft] = marrow + (1 - w) * 0.5 * (p.cortex_hu - marrow) + w * (thigh["cortex_hu"] - marrow)
        img[canal] = marrow + w * (thigh["canal_hu"] - marrow)
        bone |= shaft
        site[shaft] = SITE_LABEL["long bone"]
    img[~body] = -1000.0
    bone &= body
    site[~bone] = 0
    return img, bone, site, disc, scler


def _paint_bone(img: np.ndarray, bone: np.ndarray, site: np.ndarray, shape: np.ndarray, label: int,
                p: PatientParams, cortex_mm: float, px: float, marrow: float | None = None) -> None:
    """Fill ``shape`` with trabecular bone inside a cortical shell; mark it in the bone and site maps.

    The shell is one pixel or more; when it is thinner than a pixel its HU is the partial-volume mix,
    which keeps a thin vertebral cortex near 650 HU as on real CT.
    """
    if not shape.any():
        return
    marrow = p.marrow_hu if marrow is None else marrow
    n_px = max(1, int(round(cortex_mm / px)))
    inner = ndimage.binary_erosion(shape, iterations=n_px)
    frac = min(1.0, cortex_mm / (n_px * px))
    cortex_val = marrow + (p.cortex_hu - marrow) * frac * CORTEX_PV
    img[shape] = cortex_val
    img[inner] = marrow
    bone |= shape
    site[shape] = label


def finish(hu: np.ndarray, p: PatientParams, rng: np.random.Generator, spacing: tuple[float, float, float]) -> np.ndarray:
    """Texture, a little blur and quantum noise, then rounding to int16 HU."""
    px = spacing[0]
    # trabecular texture: low-amplitude smooth variation everywhere (tissue heterogeneity)
    tex = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), (1.2, 1.2, 0.6))
    tex *= 8.0 / max(1e-6, float(tex.std()))
    out = hu + np.where(hu > -500, tex * (1 + (hu > 90) * TRAB_TEX), 0)
    out = ndimage.gaussian_filter(out, (0.55 * 1.5 / px, 0.55 * 1.5 / px, 0.35))
    out += rng.normal(0, p.noise_sigma, size=hu.shape).astype(np.float32)
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)
