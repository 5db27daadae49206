"""Synthetic ImageXpress plates in the exact MetaXpress "classic" input contract.

A HUVEC-like cobblestone monolayer (Voronoi cells ~120-170 px across at 0.34 um/px, i.e.
~40-60 um, at a fixed physical scale whatever the image size, pixel size or binning), oval
textured nuclei, VE-cadherin junctions and cortical actin. The SSc phenotype scales with a
per-donor severity s in [0, 1]: jagged and fragmented junctions, and actin moving from the
cortex into intracellular stress fibres (``phenotype_gain`` > 0 also moves intensities).
Nuisances: per-plate/channel vignetting (known flatfield), a camera offset, shot and read
noise, objectives with their own gain/noise (a plate may switch to a second objective, with
its own vignetting, for its last wells), camera binning, small benign debris, deliberately
failed sites (blur, saturation, cell-free fields, large bright debris) and whole failed
plates (blank, saturated, blurred). Every image carries MetaSeries XML like a real
ImageXpress export (optional); the HTD file is optional too.

Ground truth goes to a separate ``truth_dir`` that the pipeline never reads (``truth.json``
with one record per site, flatfields per objective, nuclei labels, debris masks).
Everything is deterministic from the seed. A default ``PlateSpec()`` writes the same pixels
and file names as before the adversarial options existed: new randomness comes from
separate generators (``np.random.default_rng([seed, k])``) or only when an option is on.
Presets: :func:`simulate_demo`, :func:`simulate_adversarial`, :func:`simulate_real_export`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np
import tifffile
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

CHANNELS = ("nuclei", "borders", "actin", "mitochondria")
WAVE_NAMES = ("DAPI", "FITC", "TRITC", "Cy5")
WAVELENGTHS_NM = (452.0, 536.0, 624.0, 692.0)  # emission wavelength MetaXpress records per wave
EXPOSURES_MS = (50.0, 150.0, 100.0, 200.0)  # per wave at exposure_scale 1
CELL_SPACING_PX = 140.0  # mean distance between neighbouring cell centres at PIXEL_SIZE_UM
PIXEL_SIZE_UM = 0.34  # unbinned camera pixel at 20X


@dataclass(frozen=True)
class ObjectiveSpec:
    """An objective (with the camera settings used with it).

    ``name`` is MetaXpress' ``_MagSetting_``, ``na`` its ``_MagNA_``. ``gain`` multiplies the
    specimen signal (light collected relative to the Plan Apo 0.75), ``read_sd`` is the read
    noise SD in counts, ``background_gain`` multiplies the specimen background
    (autofluorescence, haze); it is 1 for the two historical objectives, whose pixels must
    not change, and equals ``gain`` for the adversarial dim objective (whole image dimmer).
    Unpacks as ``gain, read_sd`` like the former tuple values.
    """

    name: str
    na: float
    gain: float
    read_sd: float
    background_gain: float = 1.0

    def __iter__(self):
        return iter((self.gain, self.read_sd))


OBJECTIVES = {
    "PlanApo-0.75": ObjectiveSpec("20X Plan Apo Lambda", 0.75, 1.0, 6.0),
    "ELWD-0.45": ObjectiveSpec("20X S Plan Fluor ELWD", 0.45, 0.55, 18.0),
    # adversarial: 4x less light on signal AND background, noisier camera setting
    "ELWD-0.45-dim": ObjectiveSpec("20X S Plan Fluor ELWD", 0.45, 0.25, 18.0, background_gain=0.25),
}
DEMO_OBJECTIVES = ("PlanApo-0.75", "ELWD-0.45")  # what simulate_demo alternates between plates
BACKGROUND = {"nuclei": 250.0, "borders": 350.0, "actin": 300.0, "mitochondria": 200.0}
PEAK = {"nuclei": 9000.0, "borders": 7000.0, "actin": 6000.0, "mitochondria": 150.0}
FAILURES = ("blur", "saturated", "empty", "debris")  # per-site artifact kinds (order matters: seeds)
PLATE_FAILURES = ("blank", "saturated", "blurred")  # whole-plate failures
_PLATE_FAILURE_RENDER = {"blank": "blank", "saturated": "saturated", "blurred": "blur"}
BLANK_BACKGROUND = 3.0  # counts of stray light on a blank plate (before the camera offset)


@dataclass(frozen=True)
class DonorSpec:
    donor_id: str
    condition: str  # HC | SSc
    group: str  # HC | SSC | SSCHL
    severity: float  # 0 (healthy) .. 1 (severe)


def default_donors() -> tuple[DonorSpec, ...]:
    return (
        DonorSpec("HC01", "HC", "HC", 0.05),
        DonorSpec("HC02", "HC", "HC", 0.10),
        DonorSpec("HC03", "HC", "HC", 0.0),
        DonorSpec("SSC01", "SSc", "SSC", 0.40),
        DonorSpec("SSC02", "SSc", "SSC", 0.50),
        DonorSpec("SSC03", "SSc", "SSC", 0.60),
        DonorSpec("SSC04", "SSc", "SSC", 0.45),
        DonorSpec("SSCHL01", "SSc", "SSCHL", 0.95),
    )


def strong_donors() -> tuple[DonorSpec, ...]:
    """Nine donors with a strong phenotype split: 3 severe SSc (SSCHL, severity 0.9-1.0),
    3 mild SSc (SSC, 0.25-0.4) and 3 HC (0-0.1). Ids differ from :func:`default_donors`."""
    return (
        DonorSpec("SSCHL11", "SSc", "SSCHL", 0.90),
        DonorSpec("SSCHL12", "SSc", "SSCHL", 0.95),
        DonorSpec("SSCHL13", "SSc", "SSCHL", 1.00),
        DonorSpec("SSC11", "SSc", "SSC", 0.25),
        DonorSpec("SSC12", "SSc", "SSC", 0.30),
        DonorSpec("SSC13", "SSc", "SSC", 0.40),
        DonorSpec("HC11", "HC", "HC", 0.0),
        DonorSpec("HC12", "HC", "HC", 0.05),
        DonorSpec("HC13", "HC", "HC", 0.10),
    )


def default_wells(n: int = 16) -> tuple[str, ...]:
    """``n`` inner wells of a 96-well plate, row-major from B02 (edge wells are avoided)."""
    wells = [f"{r}{c:02d}" for r in "BCDEFG" for c in range(2, 12)]
    if n > len(wells):
        wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
    return tuple(wells[:n])


@dataclass(frozen=True)
class PlateSpec:
    """What to simulate.

    ``image_size`` is the side of every image in (binned) pixels. Cells keep their physical
    size: at the default 0.34 um/px they are ~140 px apart; the effective pixel size is
    ``pixel_size_um * binning`` (um/px) and all geometry scales by 0.34 / effective size.
    Binning b also collects b*b more light per pixel (signal and background), scaled further
    by ``exposure_scale`` (which also scales the exposures written in the metadata).

    Adversarial options (all off by default): ``objective_split`` (fraction of wells, a
    block at the end of ``wells``, imaged with ``second_objective``), ``failure_kinds``
    (per-site artifacts drawn for ``n_failed_sites``, cycled in this order),
    ``plate_failure`` (one of :data:`PLATE_FAILURES`), ``phenotype_gain`` (severity also
    changes actin/border brightness), ``write_metadata`` / ``write_htd`` (real exports).
    """

    wells: tuple[str, ...] = field(default_factory=default_wells)
    donors: tuple[DonorSpec, ...] = field(default_factory=default_donors)
    n_sites: int = 4
    n_channels: int = 4
    image_size: int = 512
    objective: str = "PlanApo-0.75"
    camera_offset: float = 100.0
    n_failed_sites: int = 3
    debris_probability: float = 0.25
    n_timepoints: int = 1
    z_steps: int = 0
    include_guid: bool = True
    include_thumbs: bool = True
    single_site: bool = False
    single_channel: bool = False
    write_nuclei_labels: bool = True
    acquisition_date: str = "2024-03-14"
    acquisition_id: str = "4127"
    objective_split: float = 0.0
    second_objective: str = "ELWD-0.45-dim"
    pixel_size_um: float = PIXEL_SIZE_UM
    binning: int = 1
    exposure_scale: float = 1.0
    illum_names: tuple[str, ...] | None = None
    write_metadata: bool = True
    write_htd: bool = True
    failure_kinds: tuple[str, ...] = FAILURES[:3]
    plate_failure: str | None = None
    phenotype_gain: float = 0.0

    @property
    def effective_pixel_size_um(self) -> float:
        """um per (binned) pixel of the written images."""
        return self.pixel_size_um * self.binning


def _check_spec(spec: PlateSpec) -> None:
    for key in (spec.objective, spec.second_objective):
        if key not in OBJECTIVES:
            raise ValueError(f"unknown objective {key!r} (known: {list(OBJECTIVES)})")
    bad = [k for k in spec.failure_kinds if k not in FAILURES]
    if bad:
        raise ValueError(f"unknown failure kind(s) {bad} (known: {list(FAILURES)})")
    if spec.n_failed_sites > 0 and not spec.failure_kinds:
        raise ValueError("n_failed_sites > 0 needs at least one failure kind")
    if spec.plate_failure is not None and spec.plate_failure not in PLATE_FAILURES:
        raise ValueError(f"unknown plate_failure {spec.plate_failure!r} (known: {list(PLATE_FAILURES)})")
    if not 0.0 <= spec.objective_split <= 1.0:
        raise ValueError(f"objective_split must be in [0, 1], got {spec.objective_split}")
    if int(spec.binning) != spec.binning or spec.binning < 1:
        raise ValueError(f"binning must be a positive integer, got {spec.binning}")
    if spec.pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um must be > 0, got {spec.pixel_size_um}")
    n_wave = 1 if spec.single_channel else spec.n_channels
    if spec.illum_names is not None and len(spec.illum_names) < n_wave:
        raise ValueError(f"illum_names needs {n_wave} names, got {spec.illum_names}")


# --------------------------------------------------------------------------- images


def make_flatfield(
    rng: np.random.Generator, size: int, strength: float | None = None, centre_range: float = 0.1
) -> np.ndarray:
    """Smooth off-centre vignetting, float32 (size, size), mean 1; corners ~0.6-0.8 of centre.

    The centre is offset by up to ``centre_range`` x size from the image centre.
    """
    strength = rng.uniform(0.25, 0.4) if strength is None else strength
    c = size * (0.5 + rng.uniform(-centre_range, centre_range, 2))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    r2 = ((x - c[1]) ** 2 + (y - c[0]) ** 2) / (0.5 * size * np.sqrt(2)) ** 2
    ff = 1.0 - strength * r2 + 0.05 * (x / size - 0.5)
    return (ff / ff.mean()).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit SD (computed at reduced size for large sigma)."""
    f = max(1, int(sigma // 4))
    small = rng.standard_normal((shape[0] // f + 2, shape[1] // f + 2)).astype(np.float32)
    small = gaussian_filter(small, sigma / f)
    small /= small.std() + 1e-9
    return cv2.resize(small, (shape[1] + 2 * f, shape[0] + 2 * f), interpolation=cv2.INTER_LINEAR)[f : f + shape[0], f : f + shape[1]]


def _cell_seeds(rng: np.random.Generator, size: int, pad: float, spacing: float = CELL_SPACING_PX) -> np.ndarray:
    """Jittered hexagonal lattice of cell centres (y, x) in px, ``spacing`` px apart,
    covering the image plus ``pad`` px."""
    s = spacing
    ys = np.arange(-pad, size + pad, s * np.sqrt(3) / 2)
    pts = []
    for i, y in enumerate(ys):
        xs = np.arange(-pad + (s / 2 if i % 2 else 0), size + pad, s)
        pts.append(np.stack([np.full_like(xs, y), xs], axis=1))
    p = np.concatenate(pts) + rng.normal(0, 0.18 * s, (sum(len(q) for q in pts), 2))
    return p.astype(np.float32)


def _debris_clumps(rng: np.random.Generator, n: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """One or two large irregular clumps or curved fibres covering 2-6 % of an (n, n) field.

    ``k`` is the geometry scale (px per px at 0.34 um). Returns the bool mask (exactly the
    drawn fraction of pixels) and a float32 brightness profile (~0.7-1.1 inside, soft edge).
    """
    target = int(round(rng.uniform(0.02, 0.06) * n * n))
    n_obj = int(rng.integers(1, 3))
    shares = [1.0] if n_obj == 1 else [w := float(rng.uniform(0.35, 0.65)), 1.0 - w]
    mask = np.zeros((n, n), bool)
    wobble = _smooth_noise(rng, (n, n), max(2.0, n / 24))
    for share in shares:
        need = int(round(share * target))
        canvas = np.full((n, n), 255, np.uint8)
        cy, cx = rng.uniform(0.2 * n, 0.8 * n, 2)
        if rng.random() < 0.5:  # clump: distance to a point, made irregular
            canvas[int(cy), int(cx)] = 0
            scale = np.sqrt(need / np.pi)
        else:  # fibre: distance to a bent line through the field
            ang = rng.uniform(0, np.pi)
            half_len = rng.uniform(0.25, 0.45) * n
            bend = rng.uniform(-0.25, 0.25) * n
            t = np.linspace(-1, 1, 64)
            px = cx + t * half_len * np.cos(ang) - (1 - t * t) * bend * np.sin(ang)
            py = cy + t * half_len * np.sin(ang) + (1 - t * t) * bend * np.cos(ang)
            cv2.polylines(canvas, [np.stack([px, py], 1).round().astype(np.int32)], False, 0, 1)
            scale = need / (4 * half_len)
        dist = cv2.distanceTransform(canvas, cv2.DIST_L2, 5)
        score = dist - 0.35 * scale * wobble
        score[mask] = np.inf  # the second object adds only new pixels: the area stays exact
        flat = np.argpartition(score.ravel(), need)[:need] if need < n * n else np.arange(n * n)
        mask.flat[flat] = True
    prof = mask * (0.9 + 0.2 * _smooth_noise(rng, (n, n), 2.0 * k))
    prof = gaussian_filter(prof.astype(np.float32), 0.8 * k)
    return mask, prof.astype(np.float32)


def render_site(
    rng_seed: int,
    image_size: int,
    severity: float,
    *,
    objective: str = "PlanApo-0.75",
    failure: str | None = None,
    flatfields: dict[str, np.ndarray] | None = None,
    offset: float = 100.0,
    debris: bool = False,
    n_channels: int = 4,
    pixel_size_um: float = PIXEL_SIZE_UM,
    binning: int = 1,
    exposure_scale: float = 1.0,
    phenotype_gain: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict]:
    """One site: channel name -> uint16 (image_size, image_size), and its truth.

    ``pixel_size_um`` is the effective (binned) pixel size of the image in um; every length
    scales by 0.34 / pixel_size_um so cells keep their physical size. ``binning`` b and
    ``exposure_scale`` multiply the light per pixel (signal and background) by b*b*scale.
    ``failure``: None, a per-site kind of :data:`FAILURES` ("blur": Gaussian of the signals,
    sigma 3.06 um; "saturated": a saturated corner; "empty": no cells; "debris": one or two
    large clumps/fibres bright in every channel) or "blank" (camera noise only).
    ``phenotype_gain`` > 0: actin x (1 + g s), borders x (1 - 0.4 min(1, g) s).

    Truth: ``nuclei_labels`` (int32, one label per nucleus, 0 background), ``cell_labels``
    (int32 Voronoi cells), ``severity``, ``failure``, and ``debris_mask`` (bool) for "debris".
    """
    rng = np.random.default_rng(rng_seed)
    n = image_size
    s = float(np.clip(severity, 0, 1))
    k = PIXEL_SIZE_UM / pixel_size_um  # geometry scale: 1.0 at the default (exact arithmetic)
    half = max(1, int(n * k) // 256)  # geometry at reduced resolution, then linear upsampling
    m = n // half
    spacing = CELL_SPACING_PX * k
    pad = spacing
    seeds = _cell_seeds(rng, n, pad, spacing)
    yy, xx = np.mgrid[0:m, 0:m].astype(np.float32) * half + (half - 1) / 2
    # jagged junctions: displace the query grid with a smooth field whose amplitude grows with s
    jag = (2.0 + 7.0 * s) * k
    dy = _smooth_noise(rng, (m, m), 6.0 * k / half) * jag
    dx = _smooth_noise(rng, (m, m), 6.0 * k / half) * jag
    tree = cKDTree(seeds)
    d, idx = tree.query(np.stack([(yy + dy).ravel(), (xx + dx).ravel()], axis=1), k=2)
    bdist = ((d[:, 1] - d[:, 0]) / 2).reshape(m, m).astype(np.float32)  # distance to the cell edge (px)
    label_small = (idx[:, 0] + 1).reshape(m, m).astype(np.int32)
    if half > 1:
        bdist = cv2.resize(bdist, (n, n), interpolation=cv2.INTER_LINEAR)
        cells = cv2.resize(label_small, (n, n), interpolation=cv2.INTER_NEAREST)
    else:
        cells = label_small
    Y, X = np.mgrid[0:n, 0:n].astype(np.float32)

    # nuclei: one ellipse per cell (a few cells carry a touching second nucleus)
    nc = len(seeds)
    a = rng.uniform(17 * k, 26 * k, nc).astype(np.float32)
    b = a * rng.uniform(0.6, 0.85, nc).astype(np.float32)
    th = rng.uniform(0, np.pi, nc).astype(np.float32)
    cy = seeds[:, 0] + rng.normal(0, 6 * k, nc)
    cx = seeds[:, 1] + rng.normal(0, 6 * k, nc)
    bright = rng.uniform(0.7, 1.0, nc).astype(np.float32)
    twin = rng.random(nc) < 0.08
    L = cells - 1
    nuc_int = np.zeros((n, n), np.float32)
    nuc_lab = np.zeros((n, n), np.int32)
    texture = 1.0 + 0.12 * _smooth_noise(rng, (n, n), 2.0 * k)
    for tw in (0, 1):
        if tw == 1:  # second nucleus of twin cells, shifted along the major axis so they touch
            sel = twin[L]
            oy_arr = (1.85 * a * np.sin(th))[L]
            ox_arr = (1.85 * a * np.cos(th))[L]
        else:
            sel = np.ones((n, n), bool)
            oy_arr = ox_arr = 0.0
        ry = Y - (cy[L] + oy_arr)
        rx = X - (cx[L] + ox_arr)
        c, sn = np.cos(th)[L], np.sin(th)[L]
        u = (rx * c + ry * sn) / a[L]
        v = (-rx * sn + ry * c) / b[L]
        r2 = u * u + v * v
        inside = (r2 < 1.0) & sel & (nuc_lab == 0)
        prof = np.sqrt(np.clip(1.0 - r2, 0, 1)) ** 0.5
        nuc_int = np.where(inside, bright[L] * (0.55 + 0.45 * prof) * texture, nuc_int)
        nuc_lab = np.where(inside, cells + tw * nc, nuc_lab)
    # relabel nuclei sequentially, dropping those outside the frame
    uniq, inv = np.unique(nuc_lab, return_inverse=True)
    nuc_lab = inv.reshape(n, n).astype(np.int32) if uniq[0] == 0 else (inv.reshape(n, n) + 1).astype(np.int32)

    # VE-cadherin junctions: a line along the cell edges, fragmented with severity
    junction = np.exp(-(bdist**2) / (2 * (2.2 * k) ** 2))
    gaps = _smooth_noise(rng, (n, n), 7.0 * k)
    keep = 1.0 / (1.0 + np.exp((np.quantile(gaps, 1 - 0.5 * s) - gaps) * -4.0)) if s > 0.02 else 1.0
    borders = junction * (0.25 + 0.75 * keep) * (1.0 + 0.15 * _smooth_noise(rng, (n, n), 3.0 * k)) + 0.05

    # actin: cortical ring (moves away with severity) + stress fibres inside the cells
    cortical = np.exp(-(np.maximum(bdist - 3.0 * k, 0) ** 2) / (2 * (4.0 * k) ** 2)) * (1.0 - 0.65 * s)
    phi = rng.uniform(0, np.pi, nc).astype(np.float32)[L]
    period = rng.uniform(9 * k, 14 * k, nc).astype(np.float32)[L]
    wob = _smooth_noise(rng, (n, n), 10.0 * k) * (2.0 * k)
    w_ = (X * np.cos(phi) + Y * np.sin(phi) + wob) / period
    fibres = np.clip(np.cos(2 * np.pi * w_), 0, 1) ** 6
    interior = np.clip(bdist / (12.0 * k), 0, 1)
    actin = cortical + (0.08 + 0.9 * s) * fibres * interior + 0.12 * interior
    if phenotype_gain > 0:  # strong phenotype: plate-wide intensity statistics move with biology
        actin = actin * (1.0 + phenotype_gain * s)
        borders = borders * (1.0 - 0.4 * min(1.0, phenotype_gain) * s)

    mito = 0.3 * interior * (1.0 + 0.5 * _smooth_noise(rng, (n, n), 2.0 * k))
    signals = {"nuclei": nuc_int, "borders": borders, "actin": actin, "mitochondria": mito}

    obj = OBJECTIVES[objective]
    light = binning * binning * exposure_scale  # 1 at the default (exact arithmetic)
    gain, read_sd = obj.gain * light, obj.read_sd
    background = {ch: v * obj.background_gain * light for ch, v in BACKGROUND.items()}
    if failure == "blur":
        signals = {ch: gaussian_filter(v, 9.0 * k) for ch, v in signals.items()}
    if failure in ("empty", "blank"):
        signals = {ch: np.zeros_like(v) for ch, v in signals.items()}
    if failure == "blank":  # nothing on the plate: stray light only
        background = {ch: BLANK_BACKGROUND for ch in BACKGROUND}
        debris = False
    truth_extra = {}
    if failure == "debris":  # large autofluorescent clumps/fibres, 2-5x the brightest cell
        drng = np.random.default_rng([rng_seed, 7])
        dmask, dprof = _debris_clumps(drng, n, k)
        factors = drng.uniform(2.0, 5.0, len(CHANNELS))
        signals = {ch: v + dprof * factors[ci] * max(float(v.max()), 0.05) for ci, (ch, v) in enumerate(signals.items())}
        truth_extra["debris_mask"] = dmask
    debris_img = np.zeros((n, n), np.float32)
    if debris:
        for _ in range(rng.integers(1, 4)):
            py, px = rng.uniform(0, n, 2)
            r = rng.uniform(2.0 * k, 5.0 * k)
            debris_img += np.exp(-((Y - py) ** 2 + (X - px) ** 2) / (2 * r * r)) * rng.uniform(2.0, 4.0)
    out = {}
    for ci, ch in enumerate(CHANNELS[:n_channels]):
        ff = flatfields[ch] if flatfields and ch in flatfields else np.ones((n, n), np.float32)
        expected = (background[ch] + gain * PEAK[ch] * (signals[ch] + debris_img * (ch != "mitochondria"))) * ff
        img = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
        img += rng.normal(0, read_sd, (n, n)).astype(np.float32) + offset
        if failure == "saturated":
            img[: int(0.35 * n), : int(0.5 * n)] = 65535.0
        out[ch] = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
    truth = {"nuclei_labels": nuc_lab, "cell_labels": cells, "severity": s, "failure": failure, **truth_extra}
    return out, truth


# --------------------------------------------------------------------------- plate writer

HTD_HEADER = '"HTSInfoFile", Version 1.0\n"Description", "ssc-assets synthetic plate"\n'


def _site_grid(n_sites: int) -> tuple[int, int]:
    """(XSites, YSites) of the HTD site grid."""
    xs = int(np.ceil(np.sqrt(n_sites)))
    return xs, int(np.ceil(n_sites / xs))


def _htd_text(plate: str, spec: PlateSpec, n_sites: int, n_wave: int) -> str:
    lines = [HTD_HEADER.rstrip("\n"), f'"TimePoints", {spec.n_timepoints}', f'"ZSeries", {"TRUE" if spec.z_steps else "FALSE"}',
             f'"SiteSelection", {"TRUE" if n_sites > 1 else "FALSE"}', f'"Waves", {"TRUE" if n_wave > 1 else "FALSE"}',
             '"XWells", 12', '"YWells", 8']
    for r, letter in enumerate("ABCDEFGH"):
        flags = ", ".join("TRUE" if f"{letter}{c:02d}" in spec.wells else "FALSE" for c in range(1, 13))
        lines.append(f'"WellsSelection{r + 1}", {flags}')
    xs, ys = _site_grid(n_sites)
    lines += [f'"XSites", {xs}', f'"YSites", {ys}']
    k = 0
    for r in range(ys):
        row = []
        for _ in range(xs):
            k += 1
            row.append("TRUE" if k <= n_sites else "FALSE")
        lines.append(f'"SiteSelection{r + 1}", ' + ", ".join(row))
    names = spec.illum_names or WAVE_NAMES
    lines.append(f'"NWavelengths", {n_wave}')
    lines += [f'"WaveName{i + 1}", "{names[i]}"' for i in range(n_wave)]
    lines += [f'"UniquePlateIdentifier", "{uuid.uuid5(uuid.NAMESPACE_DNS, plate)}"', '"EndFile"']
    return "\n".join(lines) + "\n"


def _xml_prop(tag: str, pid: str, ptype: str, value) -> str:
    if ptype == "float":
        value = f"{float(value):.10g}"
    return f'<{tag} id="{pid}" type="{ptype}" value="{escape(str(value), {chr(34): "&quot;"})}"/>'


def _metaseries_description(
    name: str,
    size: int,
    wave: str,
    *,
    pixel_size_um: float = PIXEL_SIZE_UM,
    binning: int = 1,
    wavelength_nm: float = 452.0,
    exposure_ms: float = 50.0,
    objective: str = "PlanApo-0.75",
    stage_xy_um: tuple[float, float] = (0.0, 0.0),
    z_um: float = 0.0,
    time: datetime | None = None,
    stage_label: str = "",
) -> str:
    """MetaSeries XML as MetaXpress writes into ImageDescription (nested PlaneInfo/MetaSeries).

    ``pixel_size_um`` is the effective (binned) calibration; ``size`` the image side in px.
    The Description's Region is the camera region in unbinned sensor pixels.
    """
    obj = OBJECTIVES[objective]
    time = time or datetime(2024, 3, 14, 10, 0, 0)
    stamp = time.strftime("%Y%m%d %H:%M:%S.") + f"{time.microsecond // 1000:03d}"
    sensor = size * binning
    description = (
        f"Exposure: {exposure_ms:g} ms&#13;&#10;Binning: {binning} x {binning}&#13;&#10;"
        f"Region: {sensor} x {sensor}, offset at (0, 0)"
    )
    p, c = "prop", "custom-prop"
    plane = [
        _xml_prop(p, "image-name", "string", name),
        _xml_prop(p, "pixel-size-x", "int", size),
        _xml_prop(p, "pixel-size-y", "int", size),
        _xml_prop(p, "spatial-calibration-x", "float", pixel_size_um),
        _xml_prop(p, "spatial-calibration-y", "float", pixel_size_um),
        _xml_prop(p, "spatial-calibration-units", "string", "um"),
        _xml_prop(p, "stage-position-x", "float", round(stage_xy_um[0], 2)),
        _xml_prop(p, "stage-position-y", "float", round(stage_xy_um[1], 2)),
        _xml_prop(p, "z-position", "float", round(z_um, 3)),
        _xml_prop(p, "wavelength", "float", wavelength_nm),
        _xml_prop(p, "acquisition-time-local", "time", stamp),
        _xml_prop(p, "stage-label", "string", stage_label),
        _xml_prop(p, "camera-binning-x", "int", binning),
        _xml_prop(p, "camera-binning-y", "int", binning),
        _xml_prop(p, "bits-per-pixel", "int", 16),
        _xml_prop(c, "_IllumSetting_", "string", wave),
        _xml_prop(c, "_MagNA_", "float", obj.na),
        _xml_prop(c, "_MagRI_", "float", 1),
        _xml_prop(c, "_MagSetting_", "string", obj.name),
    ]
    return (
        "<MetaData><PlaneInfo>" + "".join(plane) + "</PlaneInfo>"
        f'<MetaSeries version="1.0"><prop id="Description" type="string" value="{description}"/></MetaSeries>'
        "<SetInfo/></MetaData>"
    )


def _stage_xy(well: str, site: int, n_sites: int, field_um: float) -> tuple[float, float]:
    """Stage position (um) of a site centre: 96-well (SBS) geometry, sites on the HTD grid."""
    row, col = ord(well[0].upper()) - ord("A"), int(well[1:])
    if row < 8 and col <= 12:
        x0, y0, pitch = 14380.0, 11240.0, 9000.0
    else:  # 384-well
        x0, y0, pitch = 12130.0, 8990.0, 4500.0
    xs, ys = _site_grid(n_sites)
    sx, sy = (site - 1) % xs, (site - 1) // xs
    step = 1.1 * field_um
    return x0 + (col - 1) * pitch + (sx - (xs - 1) / 2) * step, y0 + row * pitch + (sy - (ys - 1) / 2) * step


def _guid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16))).upper()


def _well_objectives(spec: PlateSpec) -> list[str]:
    """Objective key per well: the last round(objective_split x n_wells) wells use the second."""
    n_second = int(round(spec.objective_split * len(spec.wells)))
    n_first = len(spec.wells) - n_second
    return [spec.objective] * n_first + [spec.second_objective] * n_second


def simulate_plate(plates_dir, truth_dir, plate_name: str, spec: PlateSpec | None = None, seed: int = 0) -> Path:
    """Write one plate folder (MetaXpress layout + platemap.csv); truth to ``truth_dir/<plate>``.

    Returns the plate folder. Nothing in ``truth_dir`` is needed by the pipeline. Truth:
    ``truth.json`` (spec, donors, wells, failed sites, and per site: well, site, objective,
    donor, group, severity, artifact), ``flatfield_<channel>.npy`` (main objective),
    ``flatfield_<objective>_<channel>.npy`` (every objective used), float32 (size, size),
    ``nuclei_labels/<well>_s<site>.npy`` and ``debris_masks/<well>_s<site>.npy`` (bool) for
    sites with the "debris" artifact.
    """
    spec = spec or PlateSpec()
    _check_spec(spec)
    rng = np.random.default_rng(seed)
    n_sites = 1 if spec.single_site else spec.n_sites
    n_wave = 1 if spec.single_channel else spec.n_channels
    size = spec.image_size
    px_um = spec.effective_pixel_size_um
    plate_dir = Path(plates_dir) / plate_name
    acq = plate_dir / spec.acquisition_date / spec.acquisition_id
    truth = Path(truth_dir) / plate_name
    truth.mkdir(parents=True, exist_ok=True)
    flatfields = {ch: make_flatfield(rng, size) for ch in CHANNELS[:n_wave]}
    for ch, ff in flatfields.items():
        np.save(truth / f"flatfield_{ch}.npy", ff)
    # objectives: the main one uses ``flatfields``; a second one its own vignetting (own generator)
    well_obj = dict(zip(spec.wells, _well_objectives(spec)))
    ff_by_obj = {spec.objective: flatfields}
    if spec.second_objective != spec.objective and spec.second_objective in well_obj.values():
        frng = np.random.default_rng([seed, 7])
        ff_by_obj[spec.second_objective] = {
            ch: make_flatfield(frng, size, strength=frng.uniform(0.45, 0.6), centre_range=0.2) for ch in CHANNELS[:n_wave]
        }
    for key in dict.fromkeys(well_obj.values()):
        for ch, ff in ff_by_obj[key].items():
            np.save(truth / f"flatfield_{key}_{ch}.npy", ff)
    donors = list(spec.donors)
    well_donor = [donors[i % len(donors)] for i in range(len(spec.wells))]
    rng.shuffle(well_donor)
    sites = [(w, s) for w in spec.wells for s in range(1, n_sites + 1)]
    fail_idx = rng.choice(len(sites), size=min(spec.n_failed_sites, len(sites)), replace=False)
    kinds = tuple(spec.failure_kinds)
    failures = {sites[i]: kinds[k % len(kinds)] for k, i in enumerate(fail_idx)}
    if spec.plate_failure is not None:
        failures = {site: spec.plate_failure for site in sites}
    (acq).mkdir(parents=True, exist_ok=True)
    if spec.write_htd:
        (acq / f"{plate_name}.HTD").write_text(_htd_text(plate_name, spec, n_sites, n_wave))
    if spec.write_nuclei_labels:
        (truth / "nuclei_labels").mkdir(exist_ok=True)
    # metadata only: acquisition clock and focus drift from their own generator
    mrng = np.random.default_rng([seed, 11])
    clock = datetime.fromisoformat(spec.acquisition_date) + timedelta(hours=10, seconds=float(mrng.uniform(0, 3600)))
    names = spec.illum_names or WAVE_NAMES
    exposures = [e * spec.exposure_scale for e in EXPOSURES_MS]
    z_step_um = 2.0
    for t in range(1, spec.n_timepoints + 1):
        tp = acq / f"TimePoint_{t}"
        tp.mkdir(parents=True, exist_ok=True)
        for wi, well in enumerate(spec.wells):
            donor = well_donor[wi]
            objective = well_obj[well]
            clock += timedelta(seconds=1.5 + float(mrng.uniform(0, 0.5)))  # move to the well
            for s in range(1, n_sites + 1):
                site_seed = int(rng.integers(2**31))
                kind = failures.get((well, s))
                imgs, st = render_site(
                    site_seed, size, donor.severity, objective=objective,
                    failure=_PLATE_FAILURE_RENDER[kind] if spec.plate_failure else kind,
                    flatfields=ff_by_obj[objective], offset=spec.camera_offset,
                    debris=bool(rng.random() < spec.debris_probability), n_channels=n_wave,
                    pixel_size_um=px_um, binning=spec.binning, exposure_scale=spec.exposure_scale,
                    phenotype_gain=spec.phenotype_gain,
                )
                if t == 1 and spec.write_nuclei_labels:
                    np.save(truth / "nuclei_labels" / f"{well}_s{s}.npy", st["nuclei_labels"])
                if t == 1 and "debris_mask" in st:
                    (truth / "debris_masks").mkdir(exist_ok=True)
                    np.save(truth / "debris_masks" / f"{well}_s{s}.npy", st["debris_mask"])
                stage_xy = _stage_xy(well, s, n_sites, size * px_um)
                z_focus = 6520.0 + 0.004 * (stage_xy[0] - 14380.0) + float(mrng.normal(0, 1.5))
                clock += timedelta(seconds=0.6 + float(mrng.uniform(0, 0.2)))  # move to the site, autofocus
                for w, ch in enumerate(CHANNELS[:n_wave], start=1):
                    stem = f"{plate_name}_{well}" + ("" if spec.single_site else f"_s{s}") + ("" if spec.single_channel else f"_w{w}")
                    guid = _guid(rng) if spec.include_guid else ""
                    # one description per written plane: the image (best focus), then each ZStep
                    z_planes = [z_focus] + [z_focus + (z - 1 - (spec.z_steps - 1) / 2) * z_step_um for z in range(1, spec.z_steps + 1)]
                    descs: list[str | None] = []
                    for z_um in z_planes:
                        if not spec.write_metadata:
                            descs.append(None)  # tifffile then writes no ImageDescription tag at all
                            continue
                        clock += timedelta(seconds=exposures[w - 1] / 1000 + 0.12 + float(mrng.uniform(0, 0.05)))
                        descs.append(_metaseries_description(
                            stem, size, names[w - 1], pixel_size_um=px_um, binning=spec.binning,
                            wavelength_nm=WAVELENGTHS_NM[w - 1], exposure_ms=exposures[w - 1], objective=objective,
                            stage_xy_um=stage_xy, z_um=z_um, time=clock, stage_label=f"{well} : Site {s}",
                        ))
                    tifffile.imwrite(tp / f"{stem}{guid}.tif", imgs[ch], description=descs[0], metadata=None)
                    if spec.include_thumbs and s == 1:
                        thumb = cv2.resize(imgs[ch], (max(1, size // 8),) * 2, interpolation=cv2.INTER_AREA)
                        tifffile.imwrite(tp / f"{stem}_thumb{guid}.tif", (thumb // 256).astype(np.uint8),
                                         metadata={} if spec.write_metadata else None)
                    for z in range(1, spec.z_steps + 1):
                        zdir = tp / f"ZStep_{z}"
                        zdir.mkdir(exist_ok=True)
                        tifffile.imwrite(zdir / f"{stem}{guid}.tif", imgs[ch], description=descs[z], metadata=None)
        clock += timedelta(minutes=30)  # until the next time point
    lines = ["well,donor_id,condition,group,objective"]
    lines += [f"{w},{d.donor_id},{d.condition},{d.group},{well_obj[w]}" for w, d in zip(spec.wells, well_donor)]
    (plate_dir / "platemap.csv").write_text("\n".join(lines) + "\n")
    donor_of = dict(zip(spec.wells, well_donor))
    record = {
        "plate": plate_name,
        "seed": seed,
        "spec": {k: v for k, v in asdict(spec).items() if k not in ("donors", "wells")},
        "donors": [asdict(d) for d in spec.donors],
        "wells": {w: {"donor_id": d.donor_id, "severity": d.severity, "objective": well_obj[w]} for w, d in zip(spec.wells, well_donor)},
        "failed_sites": [{"well": w, "site": s, "kind": k} for (w, s), k in sorted(failures.items())],
        "camera_offset": spec.camera_offset,
        "cell_spacing_px": CELL_SPACING_PX * (PIXEL_SIZE_UM / px_um),
        "sites": [
            {"well": w, "site": s, "objective": well_obj[w], "donor_id": donor_of[w].donor_id, "group": donor_of[w].group,
             "severity": donor_of[w].severity, "artifact": failures.get((w, s))}
            for w, s in sites
        ],
        "plate_failure": spec.plate_failure,
        "pixel_size_um": px_um,
        "binning": spec.binning,
    }
    (truth / "truth.json").write_text(json.dumps(record, indent=1))
    return plate_dir


def load_site_truth(truth_dir, plate: str):
    """Per-site ground truth of one simulated plate as a pandas DataFrame.

    Columns ``Metadata_Well, Metadata_Site, objective, donor_id, group, severity, artifact``
    (artifact: a kind of :data:`FAILURES`, the plate failure for every site of a failed
    plate, or "" when none). One row per well x site, in acquisition order.
    """
    import pandas as pd

    rec = json.loads((Path(truth_dir) / plate / "truth.json").read_text())
    rows = rec.get("sites")
    if rows is None:  # truth written before per-site records existed: rebuild them
        group = {d["donor_id"]: d["group"] for d in rec["donors"]}
        fail = {(f["well"], f["site"]): f["kind"] for f in rec["failed_sites"]}
        n_sites = 1 if rec["spec"].get("single_site") else rec["spec"]["n_sites"]
        rows = [
            {"well": w, "site": s, "objective": v["objective"], "donor_id": v["donor_id"], "group": group.get(v["donor_id"], ""),
             "severity": v["severity"], "artifact": fail.get((w, s))}
            for w, v in rec["wells"].items() for s in range(1, n_sites + 1)
        ]
    df = pd.DataFrame(rows, columns=["well", "site", "objective", "donor_id", "group", "severity", "artifact"])
    df["artifact"] = df["artifact"].fillna("").astype(str)
    df["site"] = df["site"].astype(int)
    df["severity"] = df["severity"].astype(float)
    return df.rename(columns={"well": "Metadata_Well", "site": "Metadata_Site"})


# --------------------------------------------------------------------------- presets


def simulate_demo(plates_dir, truth_dir, n_plates: int = 2, seed: int = 0, image_size: int = 512, n_wells: int = 16) -> list[Path]:
    """The demo: ``n_plates`` plates with the SAME donors (replicates across plates), two
    objectives alternating between plates, ``n_wells`` wells x 4 sites x 4 channels."""
    objectives = list(DEMO_OBJECTIVES)
    out = []
    for p in range(n_plates):
        spec = PlateSpec(wells=default_wells(n_wells), image_size=image_size, objective=objectives[p % len(objectives)])
        out.append(simulate_plate(plates_dir, truth_dir, f"SSC-DEMO-{p + 1:02d}", spec, seed=seed * 1000 + p))
    return out


def simulate_adversarial(plates_dir, truth_dir, seed: int = 0, image_size: int = 256, n_wells: int = 24, n_sites: int = 4) -> list[Path]:
    """Hard plates for evaluating QC and illumination correction on held-out seeds.

    ``SSC-ADV-<seed>-SPLIT``: ``n_wells`` wells x ``n_sites`` sites, the last half of the
    wells imaged with the dim "ELWD-0.45-dim" objective (own vignetting), :func:`strong_donors`
    with ``phenotype_gain`` 1.5, a camera offset in [100, 200], ~12 % of the sites failed with
    all four :data:`FAILURES` kinds, benign debris. ``SSC-ADV-<seed>-BLANK``, ``-SATURATED``,
    ``-BLURRED``: 4 wells x ``n_sites`` whole-plate failures. Deterministic from ``seed``.
    Returns the four plate folders.
    """
    rng = np.random.default_rng([seed, 2718])
    offset = float(rng.integers(100, 201))
    n_total = n_wells * n_sites
    n_failed = min(n_total, max(len(FAILURES), int(round(0.12 * n_total))))
    common = dict(donors=strong_donors(), n_sites=n_sites, image_size=image_size, camera_offset=offset, phenotype_gain=1.5)
    out = [
        simulate_plate(
            plates_dir, truth_dir, f"SSC-ADV-{seed}-SPLIT",
            PlateSpec(wells=default_wells(n_wells), objective_split=0.5, second_objective="ELWD-0.45-dim",
                      n_failed_sites=n_failed, failure_kinds=FAILURES, debris_probability=0.25, **common),
            seed=int(rng.integers(2**31)),
        )
    ]
    for kind in PLATE_FAILURES:
        spec = PlateSpec(wells=default_wells(4), n_failed_sites=0, plate_failure=kind, **common)
        out.append(simulate_plate(plates_dir, truth_dir, f"SSC-ADV-{seed}-{kind.upper()}", spec, seed=int(rng.integers(2**31))))
    return out


def simulate_real_export(plates_dir, truth_dir, seed: int = 0, image_size: int = 256, n_wells: int = 8) -> Path:
    """A plate like real exports: 3 wavelengths (nuclei, borders, actin), camera binning 4x4
    (1.36 um/px, nuclei ~11 px across), no HTD file, MetaSeries XML in every image, 20X Plan
    Apo Lambda. Exposures are 1/8 of the unbinned ones (binning collects 16x the light), so
    images are about twice as bright as unbinned ones. Returns the plate folder
    ``SSC-EXPORT-<seed>``."""
    spec = PlateSpec(
        wells=default_wells(n_wells), n_channels=3, image_size=image_size, objective="PlanApo-0.75", binning=4,
        exposure_scale=0.125, write_htd=False, write_metadata=True,
    )
    plate_seed = int(np.random.default_rng([seed, 3141]).integers(2**31))
    return simulate_plate(plates_dir, truth_dir, f"SSC-EXPORT-{seed}", spec, seed=plate_seed)
