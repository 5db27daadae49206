"""Synthetic ImageXpress plates in the exact MetaXpress "classic" input contract.

A HUVEC-like cobblestone monolayer (Voronoi cells ~120-170 px across, at a fixed pixel scale
whatever the image size), oval textured nuclei, VE-cadherin junctions and cortical actin.
The SSc phenotype scales with a per-donor severity s in [0, 1]: jagged and fragmented
junctions, and actin moving from the cortex into intracellular stress fibres.
Nuisances: per-plate/channel vignetting (known flatfield), a camera offset, shot and read
noise, two objectives (one dimmer and noisier), debris and a few deliberately failed sites.

Ground truth goes to a separate ``truth_dir`` that the pipeline never reads. Everything is
deterministic from the seed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

CHANNELS = ("nuclei", "borders", "actin", "mitochondria")
WAVE_NAMES = ("DAPI", "FITC", "TRITC", "Cy5")
CELL_SPACING_PX = 140.0  # mean distance between neighbouring cell centres
PIXEL_SIZE_UM = 0.34
OBJECTIVES = {
    # name: (signal gain, read noise SD in counts)
    "PlanApo-0.75": (1.0, 6.0),
    "ELWD-0.45": (0.55, 18.0),
}
BACKGROUND = {"nuclei": 250.0, "borders": 350.0, "actin": 300.0, "mitochondria": 200.0}
PEAK = {"nuclei": 9000.0, "borders": 7000.0, "actin": 6000.0, "mitochondria": 150.0}
FAILURES = ("blur", "saturated", "empty")


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


def default_wells(n: int = 16) -> tuple[str, ...]:
    """``n`` inner wells of a 96-well plate, row-major from B02 (edge wells are avoided)."""
    wells = [f"{r}{c:02d}" for r in "BCDEFG" for c in range(2, 12)]
    if n > len(wells):
        wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
    return tuple(wells[:n])


@dataclass(frozen=True)
class PlateSpec:
    """What to simulate. Image side in pixels; cells keep their pixel size at any side."""

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


# --------------------------------------------------------------------------- images


def make_flatfield(rng: np.random.Generator, size: int, strength: float | None = None) -> np.ndarray:
    """Smooth off-centre vignetting, float32 (size, size), mean 1; corners ~0.6-0.8 of centre."""
    strength = rng.uniform(0.25, 0.4) if strength is None else strength
    c = size * (0.5 + rng.uniform(-0.1, 0.1, 2))
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


def _cell_seeds(rng: np.random.Generator, size: int, pad: float) -> np.ndarray:
    """Jittered hexagonal lattice of cell centres (y, x) covering the image plus ``pad``."""
    s = CELL_SPACING_PX
    ys = np.arange(-pad, size + pad, s * np.sqrt(3) / 2)
    pts = []
    for i, y in enumerate(ys):
        xs = np.arange(-pad + (s / 2 if i % 2 else 0), size + pad, s)
        pts.append(np.stack([np.full_like(xs, y), xs], axis=1))
    p = np.concatenate(pts) + rng.normal(0, 0.18 * s, (sum(len(q) for q in pts), 2))
    return p.astype(np.float32)


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
) -> tuple[dict[str, np.ndarray], dict]:
    """One site: channel name -> uint16 (image_size, image_size), and its truth.

    Truth: ``nuclei_labels`` (int32, one label per nucleus, 0 background), ``cell_labels``
    (int32 Voronoi cells), ``severity``, ``failure``.
    """
    rng = np.random.default_rng(rng_seed)
    n = image_size
    s = float(np.clip(severity, 0, 1))
    half = max(1, n // 256)  # geometry at reduced resolution, then linear upsampling
    m = n // half
    pad = CELL_SPACING_PX
    seeds = _cell_seeds(rng, n, pad)
    yy, xx = np.mgrid[0:m, 0:m].astype(np.float32) * half + (half - 1) / 2
    # jagged junctions: displace the query grid with a smooth field whose amplitude grows with s
    jag = 2.0 + 7.0 * s
    dy = _smooth_noise(rng, (m, m), 6.0 / half) * jag
    dx = _smooth_noise(rng, (m, m), 6.0 / half) * jag
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
    a = rng.uniform(17, 26, nc).astype(np.float32)
    b = a * rng.uniform(0.6, 0.85, nc).astype(np.float32)
    th = rng.uniform(0, np.pi, nc).astype(np.float32)
    cy = seeds[:, 0] + rng.normal(0, 6, nc)
    cx = seeds[:, 1] + rng.normal(0, 6, nc)
    bright = rng.uniform(0.7, 1.0, nc).astype(np.float32)
    twin = rng.random(nc) < 0.08
    L = cells - 1
    nuc_int = np.zeros((n, n), np.float32)
    nuc_lab = np.zeros((n, n), np.int32)
    texture = 1.0 + 0.12 * _smooth_noise(rng, (n, n), 2.0)
    for k in (0, 1):
        if k == 1:  # second nucleus of twin cells, shifted along the major axis so they touch
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
        nuc_lab = np.where(inside, cells + k * nc, nuc_lab)
    # relabel nuclei sequentially, dropping those outside the frame
    uniq, inv = np.unique(nuc_lab, return_inverse=True)
    nuc_lab = inv.reshape(n, n).astype(np.int32) if uniq[0] == 0 else (inv.reshape(n, n) + 1).astype(np.int32)

    # VE-cadherin junctions: a line along the cell edges, fragmented with severity
    junction = np.exp(-(bdist**2) / (2 * 2.2**2))
    gaps = _smooth_noise(rng, (n, n), 7.0)
    keep = 1.0 / (1.0 + np.exp((np.quantile(gaps, 1 - 0.5 * s) - gaps) * -4.0)) if s > 0.02 else 1.0
    borders = junction * (0.25 + 0.75 * keep) * (1.0 + 0.15 * _smooth_noise(rng, (n, n), 3.0)) + 0.05

    # actin: cortical ring (moves away with severity) + stress fibres inside the cells
    cortical = np.exp(-(np.maximum(bdist - 3.0, 0) ** 2) / (2 * 4.0**2)) * (1.0 - 0.65 * s)
    phi = rng.uniform(0, np.pi, nc).astype(np.float32)[L]
    period = rng.uniform(9, 14, nc).astype(np.float32)[L]
    wob = _smooth_noise(rng, (n, n), 10.0) * 2.0
    w_ = (X * np.cos(phi) + Y * np.sin(phi) + wob) / period
    fibres = np.clip(np.cos(2 * np.pi * w_), 0, 1) ** 6
    interior = np.clip(bdist / 12.0, 0, 1)
    actin = cortical + (0.08 + 0.9 * s) * fibres * interior + 0.12 * interior

    mito = 0.3 * interior * (1.0 + 0.5 * _smooth_noise(rng, (n, n), 2.0))
    signals = {"nuclei": nuc_int, "borders": borders, "actin": actin, "mitochondria": mito}

    gain, read_sd = OBJECTIVES[objective]
    if failure == "blur":
        signals = {k: gaussian_filter(v, 9.0) for k, v in signals.items()}
    if failure == "empty":
        signals = {k: np.zeros_like(v) for k, v in signals.items()}
    debris_img = np.zeros((n, n), np.float32)
    if debris:
        for _ in range(rng.integers(1, 4)):
            py, px = rng.uniform(0, n, 2)
            r = rng.uniform(2.0, 5.0)
            debris_img += np.exp(-((Y - py) ** 2 + (X - px) ** 2) / (2 * r * r)) * rng.uniform(2.0, 4.0)
    out = {}
    for ci, ch in enumerate(CHANNELS[:n_channels]):
        ff = flatfields[ch] if flatfields and ch in flatfields else np.ones((n, n), np.float32)
        expected = (BACKGROUND[ch] + gain * PEAK[ch] * (signals[ch] + debris_img * (ch != "mitochondria"))) * ff
        img = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
        img += rng.normal(0, read_sd, (n, n)).astype(np.float32) + offset
        if failure == "saturated":
            img[: int(0.35 * n), : int(0.5 * n)] = 65535.0
        out[ch] = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
    truth = {"nuclei_labels": nuc_lab, "cell_labels": cells, "severity": s, "failure": failure}
    return out, truth


# --------------------------------------------------------------------------- plate writer

HTD_HEADER = '"HTSInfoFile", Version 1.0\n"Description", "ssc-assets synthetic plate"\n'


def _htd_text(plate: str, spec: PlateSpec, n_sites: int, n_wave: int) -> str:
    lines = [HTD_HEADER.rstrip("\n"), f'"TimePoints", {spec.n_timepoints}', f'"ZSeries", {"TRUE" if spec.z_steps else "FALSE"}',
             f'"SiteSelection", {"TRUE" if n_sites > 1 else "FALSE"}', f'"Waves", {"TRUE" if n_wave > 1 else "FALSE"}',
             '"XWells", 12', '"YWells", 8']
    for r, letter in enumerate("ABCDEFGH"):
        flags = ", ".join("TRUE" if f"{letter}{c:02d}" in spec.wells else "FALSE" for c in range(1, 13))
        lines.append(f'"WellsSelection{r + 1}", {flags}')
    xs = int(np.ceil(np.sqrt(n_sites)))
    ys = int(np.ceil(n_sites / xs))
    lines += [f'"XSites", {xs}', f'"YSites", {ys}']
    k = 0
    for r in range(ys):
        row = []
        for _ in range(xs):
            k += 1
            row.append("TRUE" if k <= n_sites else "FALSE")
        lines.append(f'"SiteSelection{r + 1}", ' + ", ".join(row))
    lines.append(f'"NWavelengths", {n_wave}')
    lines += [f'"WaveName{i + 1}", "{WAVE_NAMES[i]}"' for i in range(n_wave)]
    lines += [f'"UniquePlateIdentifier", "{uuid.uuid5(uuid.NAMESPACE_DNS, plate)}"', '"EndFile"']
    return "\n".join(lines) + "\n"


def _metaseries_description(name: str, size: int, wave: str) -> str:
    return (
        "<MetaData>"
        f'<prop id="image-name" type="string" value="{name}"/>'
        f'<prop id="pixel-size-x" type="int" value="{size}"/><prop id="pixel-size-y" type="int" value="{size}"/>'
        f'<prop id="spatial-calibration-x" type="float" value="{PIXEL_SIZE_UM}"/>'
        f'<prop id="spatial-calibration-y" type="float" value="{PIXEL_SIZE_UM}"/>'
        '<prop id="spatial-calibration-units" type="string" value="um"/>'
        f'<prop id="_IllumSetting_" type="string" value="{wave}"/>'
        "</MetaData>"
    )


def _guid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16))).upper()


def simulate_plate(plates_dir, truth_dir, plate_name: str, spec: PlateSpec | None = None, seed: int = 0) -> Path:
    """Write one plate folder (MetaXpress layout + platemap.csv); truth to ``truth_dir/<plate>``.

    Returns the plate folder. Nothing in ``truth_dir`` is needed by the pipeline.
    """
    spec = spec or PlateSpec()
    rng = np.random.default_rng(seed)
    n_sites = 1 if spec.single_site else spec.n_sites
    n_wave = 1 if spec.single_channel else spec.n_channels
    size = spec.image_size
    plate_dir = Path(plates_dir) / plate_name
    acq = plate_dir / spec.acquisition_date / spec.acquisition_id
    truth = Path(truth_dir) / plate_name
    truth.mkdir(parents=True, exist_ok=True)
    flatfields = {ch: make_flatfield(rng, size) for ch in CHANNELS[:n_wave]}
    for ch, ff in flatfields.items():
        np.save(truth / f"flatfield_{ch}.npy", ff)
    donors = list(spec.donors)
    well_donor = [donors[i % len(donors)] for i in range(len(spec.wells))]
    rng.shuffle(well_donor)
    sites = [(w, s) for w in spec.wells for s in range(1, n_sites + 1)]
    fail_idx = rng.choice(len(sites), size=min(spec.n_failed_sites, len(sites)), replace=False)
    failures = {sites[i]: FAILURES[k % len(FAILURES)] for k, i in enumerate(fail_idx)}
    (acq).mkdir(parents=True, exist_ok=True)
    (acq / f"{plate_name}.HTD").write_text(_htd_text(plate_name, spec, n_sites, n_wave))
    if spec.write_nuclei_labels:
        (truth / "nuclei_labels").mkdir(exist_ok=True)
    for t in range(1, spec.n_timepoints + 1):
        tp = acq / f"TimePoint_{t}"
        tp.mkdir(parents=True, exist_ok=True)
        for wi, well in enumerate(spec.wells):
            donor = well_donor[wi]
            for s in range(1, n_sites + 1):
                site_seed = int(rng.integers(2**31))
                imgs, st = render_site(
                    site_seed, size, donor.severity, objective=spec.objective, failure=failures.get((well, s)),
                    flatfields=flatfields, offset=spec.camera_offset, debris=bool(rng.random() < spec.debris_probability),
                    n_channels=n_wave,
                )
                if t == 1 and spec.write_nuclei_labels:
                    np.save(truth / "nuclei_labels" / f"{well}_s{s}.npy", st["nuclei_labels"])
                for w, ch in enumerate(CHANNELS[:n_wave], start=1):
                    stem = f"{plate_name}_{well}" + ("" if spec.single_site else f"_s{s}") + ("" if spec.single_channel else f"_w{w}")
                    guid = _guid(rng) if spec.include_guid else ""
                    desc = _metaseries_description(stem, size, WAVE_NAMES[w - 1])
                    tifffile.imwrite(tp / f"{stem}{guid}.tif", imgs[ch], description=desc, metadata=None)
                    if spec.include_thumbs and s == 1:
                        thumb = cv2.resize(imgs[ch], (max(1, size // 8),) * 2, interpolation=cv2.INTER_AREA)
                        tifffile.imwrite(tp / f"{stem}_thumb{guid}.tif", (thumb // 256).astype(np.uint8))
                    for z in range(1, spec.z_steps + 1):
                        zdir = tp / f"ZStep_{z}"
                        zdir.mkdir(exist_ok=True)
                        tifffile.imwrite(zdir / f"{stem}{guid}.tif", imgs[ch], description=desc, metadata=None)
    lines = ["well,donor_id,condition,group,objective"]
    lines += [f"{w},{d.donor_id},{d.condition},{d.group},{spec.objective}" for w, d in zip(spec.wells, well_donor)]
    (plate_dir / "platemap.csv").write_text("\n".join(lines) + "\n")
    record = {
        "plate": plate_name,
        "seed": seed,
        "spec": {k: v for k, v in asdict(spec).items() if k not in ("donors", "wells")},
        "donors": [asdict(d) for d in spec.donors],
        "wells": {w: {"donor_id": d.donor_id, "severity": d.severity, "objective": spec.objective} for w, d in zip(spec.wells, well_donor)},
        "failed_sites": [{"well": w, "site": s, "kind": k} for (w, s), k in sorted(failures.items())],
        "camera_offset": spec.camera_offset,
        "cell_spacing_px": CELL_SPACING_PX,
    }
    (truth / "truth.json").write_text(json.dumps(record, indent=1))
    return plate_dir


def simulate_demo(plates_dir, truth_dir, n_plates: int = 2, seed: int = 0, image_size: int = 512, n_wells: int = 16) -> list[Path]:
    """The demo: ``n_plates`` plates with the SAME donors (replicates across plates), two
    objectives alternating between plates, ``n_wells`` wells x 4 sites x 4 channels."""
    objectives = list(OBJECTIVES)
    out = []
    for p in range(n_plates):
        spec = PlateSpec(wells=default_wells(n_wells), image_size=image_size, objective=objectives[p % len(objectives)])
        out.append(simulate_plate(plates_dir, truth_dir, f"SSC-DEMO-{p + 1:02d}", spec, seed=seed * 1000 + p))
    return out
