"""Accuracy of the per-acquisition-group illumination profiles against the simulator's truth.

Simulates (in a temporary folder) objective-split plates like ``simulate_adversarial``: the
last half of the wells imaged with the dim "ELWD-0.45-dim" objective (4x less light, noisier,
its own vignetting), strong-phenotype donors (``phenotype_gain`` 1.5), benign debris, a
camera offset, and a few artifact sites (blur, saturated, empty, large debris) that are
dropped as QC would (from the truth's ``artifact`` column). Then, exactly like the
``illumination_profiles`` asset, per acquisition group (= objective) and channel:
``site_pipeline.illumination_background`` on every image (read back from the TIFF) and
``illumination.profile_from_backgrounds(grids, shape, darkfield=..., sigma_fraction=1/32)``,

* with ``darkfield="auto"`` (the asset's default: offset estimated from the images),
* with the true camera offset given (the asset's ``camera_offset`` Config),
* and, for comparison, ONE plate-wide profile from both groups pooled (auto darkfield),

and compares each flatfield with the true one of the group's objective
(``flatfield_<objective>_<channel>.npy``): both normalised to mean 1, RMS and max of
``|estimate / truth - 1|`` over the full image.

    .venv/bin/python benchmarks/illumination_accuracy.py                 # 2048 px, 24 wells x 4 sites
    .venv/bin/python benchmarks/illumination_accuracy.py --size 512 --binning 4   # same field, binned 4x4

The table's darkfield column is the ``"auto"`` estimate and its method ("regression",
"foreground" or "zero", see ``illumination.estimate_darkfield``). A full 2048 px run renders
192 sites x 3 channels (~4 s of CPU per site): ~6-7 min on 2 idle cores, longer when the
machine is shared (the wall time and the load average are printed).

Seeds and offsets pair up: the i-th seed's plate gets the i-th offset (offsets cycle), so
the default ``--seeds 11 12 --offsets 100 200`` simulates two plates (offsets at both ends
of the 100-200 range). Plates are simulated in a process pool (``--workers``, default 2).
Only nuclei, borders and actin are rendered (``n_channels=3``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ssc_assets.core.image import illumination as IL
from ssc_assets.core.image.site_tasks import illumination_background
from ssc_assets.core.simulate import FAILURES, PlateSpec, default_wells, load_site_truth, simulate_plate, strong_donors

CHANNELS = ("nuclei", "borders", "actin")  # w1, w2, w3
SIGMA_FRACTION = 1.0 / 32.0  # the asset's default
_NAME = re.compile(r"_(?P<well>[A-P]\d{2})_s(?P<site>\d+)_w(?P<w>\d)")


def flatfield_error(est: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(RMS, max) of ``|est / true - 1|`` with both normalised to mean 1 (fractions)."""
    e = np.asarray(est, np.float64)
    t = np.asarray(true, np.float64)
    r = (e / e.mean()) / (t / t.mean()) - 1.0
    return float(np.sqrt(np.mean(r * r))), float(np.abs(r).max())


def split_plate_spec(
    size: int, n_wells: int, offset: float, n_sites: int = 4, n_failed: int | None = None, **overrides
) -> PlateSpec:
    """The benchmark's plate: half the wells on the dim second objective, strong phenotype,
    all four artifact kinds on ~6 % of the sites (at least 4), benign debris. ``overrides``:
    other :class:`PlateSpec` fields (e.g. ``binning``, ``exposure_scale``)."""
    n_total = n_wells * n_sites
    n_failed = max(len(FAILURES), int(round(0.06 * n_total))) if n_failed is None else n_failed
    return PlateSpec(
        wells=default_wells(n_wells), n_sites=n_sites, n_channels=len(CHANNELS), image_size=size,
        camera_offset=float(offset), objective_split=0.5, second_objective="ELWD-0.45-dim",
        donors=strong_donors(), phenotype_gain=1.5, n_failed_sites=n_failed, failure_kinds=FAILURES,
        debris_probability=0.25, include_thumbs=False, write_nuclei_labels=False, **overrides,
    )


def plate_grids(plates_dir, truth_dir, plate: str, size: int) -> tuple[dict, dict, dict]:
    """Background grids of the QC-passed (artifact-free) images of a simulated plate.

    Returns ``grids[(objective, channel)]`` (list of grids), ``n_sites[objective]`` and
    ``truth_ff[(objective, channel)]`` (the true flatfield).
    """
    truth = load_site_truth(truth_dir, plate)
    site_obj = {(r.Metadata_Well, int(r.Metadata_Site)): r.objective for r in truth.itertuples() if not r.artifact}
    n_sites: dict[str, int] = {}
    for obj in site_obj.values():
        n_sites[obj] = n_sites.get(obj, 0) + 1
    grids: dict[tuple[str, str], list[np.ndarray]] = {}
    for path in sorted(Path(plates_dir, plate).rglob("*.tif")):
        m = _NAME.search(path.name)
        if m is None or "_thumb" in path.name:
            continue
        key = (m["well"], int(m["site"]))
        if key not in site_obj:  # an artifact site: QC drops it
            continue
        ch = CHANNELS[int(m["w"]) - 1]
        grids.setdefault((site_obj[key], ch), []).append(illumination_background((str(path), (size, size))))
    truth_ff = {
        (obj, ch): np.load(Path(truth_dir) / plate / f"flatfield_{obj}_{ch}.npy") for obj in n_sites for ch in CHANNELS
    }
    return grids, n_sites, truth_ff


def evaluate(grids: dict, n_sites: dict, truth_ff: dict, offset: float, size: int) -> list[dict]:
    """One row per (objective group, channel): darkfields and flatfield errors."""
    rows = []
    shape = (size, size)
    for ch in CHANNELS:
        pooled = [g for (obj, c), gs in grids.items() if c == ch for g in gs]
        plate_wide = IL.profile_from_backgrounds(pooled, shape, darkfield="auto", sigma_fraction=SIGMA_FRACTION)
        for obj in n_sites:
            gs = grids[(obj, ch)]
            auto = IL.profile_from_backgrounds(gs, shape, darkfield="auto", sigma_fraction=SIGMA_FRACTION)
            given = IL.profile_from_backgrounds(gs, shape, darkfield=offset, sigma_fraction=SIGMA_FRACTION)
            true = truth_ff[(obj, ch)]
            rms_a, max_a = flatfield_error(auto.flatfield, true)
            rms_g, max_g = flatfield_error(given.flatfield, true)
            rms_p, max_p = flatfield_error(plate_wide.flatfield, true)
            rows.append({
                "group": obj, "channel": ch, "n_sites": n_sites[obj], "n_images": len(gs),
                "darkfield": auto.darkfield, "darkfield_method": auto.darkfield_method,
                "rms_auto": rms_a, "max_auto": max_a, "rms_given": rms_g, "max_given": max_g,
                "rms_plate": rms_p, "max_plate": max_p,
                "true_max_over_min": float(true.max() / true.min()),
            })
    return rows


def run_plate(seed: int, offset: float, size: int, n_wells: int, n_sites: int = 4, binning: int = 1) -> tuple[list[dict], dict]:
    """Simulate one split plate in a temporary folder and evaluate it. ``binning`` b > 1:
    camera binning (cells keep their physical size) with exposures scaled by 1 / b^2, so
    pixels get the same counts as unbinned ones."""
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="illum_bench_") as tmp:
        plates, truth = Path(tmp, "plates"), Path(tmp, "truth")
        plate = f"ILLUM-{seed}"
        spec = split_plate_spec(size, n_wells, offset, n_sites, binning=binning, exposure_scale=1.0 / binning**2)
        simulate_plate(plates, truth, plate, spec, seed=seed)
        t1 = time.perf_counter()
        grids, n_by_group, truth_ff = plate_grids(plates, truth, plate, size)
        t2 = time.perf_counter()
        rows = evaluate(grids, n_by_group, truth_ff, offset, size)
        t3 = time.perf_counter()
    for r in rows:
        r.update(seed=seed, offset=offset)
    n_images = sum(len(g) for g in grids.values())
    return rows, {"seed": seed, "simulate_s": t1 - t0, "backgrounds_s": t2 - t1, "profiles_s": t3 - t2,
                  "n_images": n_images, "n_sites_rendered": n_wells * n_sites, "cpu_s": time.process_time() - c0}


def markdown_table(rows: list[dict]) -> str:
    head = ("| seed | offset | group (objective) | channel | n sites | darkfield est. (method) / true "
            "| RMS % auto (max %) | RMS % offset given (max %) | RMS % plate-wide (max %) |")
    out = [head, "|" + "---|" * 9]
    for r in rows:
        out.append(
            f"| {r['seed']} | {r['offset']:.0f} | {r['group']} | {r['channel']} | {r['n_sites']} "
            f"| {r['darkfield']:.1f} ({r['darkfield_method']}) / {r['offset']:.0f} "
            f"| {100 * r['rms_auto']:.2f} ({100 * r['max_auto']:.1f}) "
            f"| {100 * r['rms_given']:.2f} ({100 * r['max_given']:.1f}) "
            f"| {100 * r['rms_plate']:.2f} ({100 * r['max_plate']:.1f}) |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="image side in px (default 2048)")
    ap.add_argument("--wells", type=int, default=24, help="wells per plate, half per objective (default 24)")
    ap.add_argument("--sites", type=int, default=4, help="sites per well (default 4)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12], help="plate seeds (default 11 12)")
    ap.add_argument("--offsets", type=float, nargs="+", default=[100.0, 200.0],
                    help="camera offsets, paired with the seeds in order and cycled (default 100 200)")
    ap.add_argument("--binning", type=int, default=1,
                    help="camera binning b (default 1); exposures are scaled by 1/b^2 (same counts per pixel), "
                         "e.g. --size 512 --binning 4 images the 2048 px field at 1.36 um/px like binned exports")
    ap.add_argument("--workers", type=int, default=2, help="process pool size (default 2)")
    ap.add_argument("--target", type=float, default=0.02, help="RMS target (default 0.02)")
    a = ap.parse_args(argv)

    runs = [(s, a.offsets[i % len(a.offsets)]) for i, s in enumerate(a.seeds)]
    print(f"illumination accuracy: {len(runs)} plate(s) {runs} (seed, offset), {a.size}^2 px, {a.wells} wells x "
          f"{a.sites} sites (half per objective), binning {a.binning}, 3 channels, {a.workers} worker(s), "
          f"{os.cpu_count()} CPU(s)", flush=True)
    t0 = time.perf_counter()
    args = [(s, o, a.size, a.wells, a.sites, a.binning) for s, o in runs]
    if a.workers > 1 and len(runs) > 1:
        with ProcessPoolExecutor(max_workers=min(a.workers, len(runs))) as pool:
            results = list(pool.map(run_plate, *zip(*args)))
    else:
        results = [run_plate(*x) for x in args]
    wall = time.perf_counter() - t0
    rows = [r for rs, _ in results for r in rs]
    for _, t in results:
        print(f"seed {t['seed']}: simulate {t['simulate_s']:.0f} s ({t['n_sites_rendered']} sites), backgrounds "
              f"{t['backgrounds_s']:.1f} s ({t['n_images']} QC-passed images), profiles {t['profiles_s']:.1f} s; "
              f"CPU {t['cpu_s']:.0f} s")
    load = os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")
    print(f"wall time {wall:.0f} s (load average over the last 5 min: {load:.1f})\n")
    print(markdown_table(rows))
    worst_auto = max(r["rms_auto"] for r in rows)
    worst_given = max(r["rms_given"] for r in rows)
    min_sites = min(r["n_sites"] for r in rows)
    print(f"\nworst RMS: auto darkfield {100 * worst_auto:.2f} %, offset given {100 * worst_given:.2f} %, "
          f"plate-wide {100 * max(r['rms_plate'] for r in rows):.2f} %; min sites per group {min_sites}")
    as_stated = a.size >= 2048 and a.binning == 1 and min_sites >= 40
    print(f"target RMS <= {100 * a.target:.1f} % per group and channel (auto darkfield): "
          f"{'MET' if worst_auto <= a.target else 'NOT MET'}; with the offset given: "
          f"{'MET' if worst_given <= a.target else 'NOT MET'} ({a.size}^2 px, >= {min_sites} sites per group"
          f"{'' if as_stated else '; the issue target is stated for 2048^2 unbinned and >= 40 sites'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
