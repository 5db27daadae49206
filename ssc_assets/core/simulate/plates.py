"""Writing one synthetic plate folder (images, HTD, platemap) and its ground truth."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import tifffile

from ssc_assets.core.simulate.metaseries import _guid, _htd_text, _metaseries_description, _stage_xy
from ssc_assets.core.simulate.render import make_flatfield, render_site
from ssc_assets.core.simulate.specs import (
    _PLATE_FAILURE_RENDER,
    CELL_SPACING_PX,
    CHANNELS,
    EXPOSURES_MS,
    PIXEL_SIZE_UM,
    WAVE_NAMES,
    WAVELENGTHS_NM,
    PlateSpec,
    _check_spec,
)


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
    px_um = spec.effective_pixel_size_um
    plate_dir = Path(plates_dir) / plate_name
    acq = plate_dir / spec.acquisition_date / spec.acquisition_id
    truth = Path(truth_dir) / plate_name
    truth.mkdir(parents=True, exist_ok=True)
    well_obj = dict(zip(spec.wells, _well_objectives(spec)))
    ff_by_obj = _write_flatfields(spec, rng, seed, truth, n_wave, well_obj)
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
    writer = _SiteWriter(spec, plate_name, truth, rng, mrng, ff_by_obj, failures, n_sites, n_wave, px_um)
    clock = datetime.fromisoformat(spec.acquisition_date) + timedelta(hours=10, seconds=float(mrng.uniform(0, 3600)))
    for t in range(1, spec.n_timepoints + 1):
        tp = acq / f"TimePoint_{t}"
        tp.mkdir(parents=True, exist_ok=True)
        for wi, well in enumerate(spec.wells):
            clock += timedelta(seconds=1.5 + float(mrng.uniform(0, 0.5)))  # move to the well
            for s in range(1, n_sites + 1):
                clock = writer.write_site(t, tp, well, s, well_donor[wi], well_obj[well], clock)
        clock += timedelta(minutes=30)  # until the next time point
    lines = ["well,donor_id,condition,group,objective"]
    lines += [f"{w},{d.donor_id},{d.condition},{d.group},{well_obj[w]}" for w, d in zip(spec.wells, well_donor)]
    (plate_dir / "platemap.csv").write_text("\n".join(lines) + "\n")
    record = _truth_record(plate_name, seed, spec, dict(zip(spec.wells, well_donor)), well_obj, sites, failures, px_um)
    (truth / "truth.json").write_text(json.dumps(record, indent=1))
    return plate_dir


def _write_flatfields(spec: PlateSpec, rng, seed: int, truth: Path, n_wave: int, well_obj: dict[str, str]) -> dict:
    """``{objective: {channel: flatfield}}``, saved to ``truth``. The main objective's come from
    ``rng``; a second objective has its own vignetting (own generator)."""
    size = spec.image_size
    flatfields = {ch: make_flatfield(rng, size) for ch in CHANNELS[:n_wave]}
    for ch, ff in flatfields.items():
        np.save(truth / f"flatfield_{ch}.npy", ff)
    ff_by_obj = {spec.objective: flatfields}
    if spec.second_objective != spec.objective and spec.second_objective in well_obj.values():
        frng = np.random.default_rng([seed, 7])
        ff_by_obj[spec.second_objective] = {
            ch: make_flatfield(frng, size, strength=frng.uniform(0.45, 0.6), centre_range=0.2) for ch in CHANNELS[:n_wave]
        }
    for key in dict.fromkeys(well_obj.values()):
        for ch, ff in ff_by_obj[key].items():
            np.save(truth / f"flatfield_{key}_{ch}.npy", ff)
    return ff_by_obj


class _SiteWriter:
    """Renders and writes the sites of one plate. ``rng`` draws the images (and GUIDs), ``mrng``
    the metadata only (clock, focus); both are consumed in acquisition order."""

    Z_STEP_UM = 2.0

    def __init__(self, spec: PlateSpec, plate_name: str, truth: Path, rng, mrng, ff_by_obj: dict,
                 failures: dict, n_sites: int, n_wave: int, px_um: float):
        self.spec, self.plate_name, self.truth, self.rng, self.mrng = spec, plate_name, truth, rng, mrng
        self.ff_by_obj, self.failures, self.n_sites, self.n_wave, self.px_um = ff_by_obj, failures, n_sites, n_wave, px_um
        self.names = spec.illum_names or WAVE_NAMES
        self.exposures = [e * spec.exposure_scale for e in EXPOSURES_MS]

    def write_site(self, t: int, tp: Path, well: str, s: int, donor, objective: str, clock: datetime) -> datetime:
        """Render site ``s`` of ``well`` and write its channels at time point ``t``; the advanced clock."""
        spec, size, rng = self.spec, self.spec.image_size, self.rng
        site_seed = int(rng.integers(2**31))
        kind = self.failures.get((well, s))
        imgs, st = render_site(
            site_seed, size, donor.severity, objective=objective,
            failure=_PLATE_FAILURE_RENDER[kind] if spec.plate_failure else kind,
            flatfields=self.ff_by_obj[objective], offset=spec.camera_offset,
            debris=bool(rng.random() < spec.debris_probability), n_channels=self.n_wave,
            pixel_size_um=self.px_um, binning=spec.binning, exposure_scale=spec.exposure_scale,
            phenotype_gain=spec.phenotype_gain,
        )
        if t == 1 and spec.write_nuclei_labels:
            np.save(self.truth / "nuclei_labels" / f"{well}_s{s}.npy", st["nuclei_labels"])
        if t == 1 and "debris_mask" in st:
            (self.truth / "debris_masks").mkdir(exist_ok=True)
            np.save(self.truth / "debris_masks" / f"{well}_s{s}.npy", st["debris_mask"])
        stage_xy = _stage_xy(well, s, self.n_sites, size * self.px_um)
        z_focus = 6520.0 + 0.004 * (stage_xy[0] - 14380.0) + float(self.mrng.normal(0, 1.5))
        clock += timedelta(seconds=0.6 + float(self.mrng.uniform(0, 0.2)))  # move to the site, autofocus
        for w, ch in enumerate(CHANNELS[:self.n_wave], start=1):
            clock = self._write_channel(tp, well, s, w, imgs[ch], objective, stage_xy, z_focus, clock)
        return clock

    def _write_channel(self, tp: Path, well: str, s: int, w: int, img: np.ndarray, objective: str,
                       stage_xy, z_focus: float, clock: datetime) -> datetime:
        """The image of channel ``w`` (best focus), its thumbnail and z-planes; the advanced clock."""
        spec, size = self.spec, self.spec.image_size
        stem = f"{self.plate_name}_{well}" + ("" if spec.single_site else f"_s{s}") + ("" if spec.single_channel else f"_w{w}")
        guid = _guid(self.rng) if spec.include_guid else ""
        # one description per written plane: the image (best focus), then each ZStep
        z_planes = [z_focus] + [z_focus + (z - 1 - (spec.z_steps - 1) / 2) * self.Z_STEP_UM for z in range(1, spec.z_steps + 1)]
        descs: list[str | None] = []
        for z_um in z_planes:
            if not spec.write_metadata:
                descs.append(None)  # tifffile then writes no ImageDescription tag at all
                continue
            clock += timedelta(seconds=self.exposures[w - 1] / 1000 + 0.12 + float(self.mrng.uniform(0, 0.05)))
            descs.append(_metaseries_description(
                stem, size, self.names[w - 1], pixel_size_um=self.px_um, binning=spec.binning,
                wavelength_nm=WAVELENGTHS_NM[w - 1], exposure_ms=self.exposures[w - 1], objective=objective,
                stage_xy_um=stage_xy, z_um=z_um, time=clock, stage_label=f"{well} : Site {s}",
            ))
        tifffile.imwrite(tp / f"{stem}{guid}.tif", img, description=descs[0], metadata=None)
        if spec.include_thumbs and s == 1:
            thumb = cv2.resize(img, (max(1, size // 8),) * 2, interpolation=cv2.INTER_AREA)
            tifffile.imwrite(tp / f"{stem}_thumb{guid}.tif", (thumb // 256).astype(np.uint8),
                             metadata={} if spec.write_metadata else None)
        for z in range(1, spec.z_steps + 1):
            zdir = tp / f"ZStep_{z}"
            zdir.mkdir(exist_ok=True)
            tifffile.imwrite(zdir / f"{stem}{guid}.tif", img, description=descs[z], metadata=None)
        return clock


def _truth_record(plate_name: str, seed: int, spec: PlateSpec, donor_of: dict, well_obj: dict[str, str],
                  sites: list[tuple[str, int]], failures: dict, px_um: float) -> dict:
    """The content of ``truth.json``."""
    return {
        "plate": plate_name,
        "seed": seed,
        "spec": {k: v for k, v in asdict(spec).items() if k not in ("donors", "wells")},
        "donors": [asdict(d) for d in spec.donors],
        "wells": {w: {"donor_id": d.donor_id, "severity": d.severity, "objective": well_obj[w]} for w, d in donor_of.items()},
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
