"""Separation check: curated profiles vs the full cp_measure set on simulated donors (issue 12).

    python benchmarks/profiles_separation.py --seeds 0 1
    python benchmarks/profiles_separation.py --seeds 0 --masks truth \\
        --fixture ssc_assets_tests/fixtures/profiles_separation_seed0.csv.gz

One simulated plate per seed: every donor of ``default_donors()`` (3 HC, 4 SSC, 1 SSCHL) in
``--wells`` wells, ``--sites`` sites per well rendered at ``--size`` px (the preprocessing
crop keeps the centre 75 %), the real preprocessing and, per site, the pipeline's masks
(``--masks segmentation``) or the simulator's own (``--masks truth``). Per feature set:
per-cell features -> site medians -> well medians -> the ``clusterings`` path for profiles
(:func:`select_and_normalize`: plate standardisation against HC, pycytominer feature
selection) -> leave-one-donor-out linear SVM well accuracy (:func:`lodo_accuracy`).
``cp_measure fast`` is the full table without texture, granularity and Costes.

``--fixture`` writes the cp_measure well table of the first seed, and a per-site fingerprint
(cells, their area, the image sum inside them) that ``ssc_assets_tests/test_profile_features.py``
compares with its own sites before using the table as its reference. The test uses truth
masks so that a change of the segmentation does not invalidate the fixture.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from ssc_assets.core.analysis.donor_scores import lodo_accuracy
from ssc_assets.core.analysis.profile_features import curated_cell_features
from ssc_assets.core.analysis.profiles import SLOW_FAMILIES, cell_features, select_and_normalize, site_profile
from ssc_assets.core.image.filters import centre_crop, preprocess_channel
from ssc_assets.core.image.segmentation import compute_masks
from ssc_assets.core.learn.embeddings import well_embeddings
from ssc_assets.core.schema import feature_columns, metadata_columns
from ssc_assets.core.simulate import default_donors, render_site

CHANNELS = ("nuclei", "borders", "actin")
SLOW_MARKERS = ("_Texture_", "_Granularity_", "Costes")
assert {"texture", "granularity", "costes"} == set(SLOW_FAMILIES)


def truth_masks(truth: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The simulator's own masks in the pipeline's contract, centre-cropped like the images:
    cells = the Voronoi cells, nuclei = the nucleus pixels labelled with their cell (a
    binucleate cell has one two-part nucleus). int32 (h, w) each."""
    cells = centre_crop(truth["cell_labels"], size=shape)
    nuclei = np.where(centre_crop(truth["nuclei_labels"], size=shape) > 0, cells, 0)
    return nuclei.astype(np.int32), cells.astype(np.int32)


def simulated_sites(seed: int, wells_per_donor: int, sites_per_well: int, size: int, masks: str = "segmentation"):
    """Yield (metadata dict, image float32 (3, h, w), nuclei, cells) of one simulated plate;
    ``masks``: ``segmentation`` (the pipeline's) or ``truth`` (the simulator's, see
    :func:`truth_masks`)."""
    rng = np.random.default_rng(seed)
    donors = list(default_donors())
    for d_i, donor in enumerate(donors):
        for w in range(wells_per_donor):
            well = f"{'BCDEFG'[w % 6]}{d_i + 2:02d}"
            for s in range(1, sites_per_well + 1):
                imgs, truth = render_site(int(rng.integers(2**31)), size, donor.severity,
                                          debris=bool(rng.random() < 0.25))
                pre = {c: preprocess_channel(imgs[c].astype(np.float32) - 100, c) for c in CHANNELS}
                if masks == "truth":
                    nuclei, cells = truth_masks(truth, pre["nuclei"].shape)
                else:
                    m = compute_masks(pre["nuclei"], pre["borders"], pre["actin"])
                    nuclei, cells = m["nuclei"], m["cells"]
                meta = {"Metadata_Plate": f"SIM{seed}", "Metadata_Well": well, "Metadata_Site": s,
                        "Metadata_Donor": donor.donor_id, "Metadata_Condition": donor.condition,
                        "Metadata_Group": donor.group, "Metadata_Method": "profiles"}
                yield meta, np.stack([pre[c] for c in CHANNELS]), nuclei, cells


def site_check(img: np.ndarray, cells: np.ndarray, ids: np.ndarray) -> dict:
    """Fingerprint of a measured site: cells, their total area and the image sum inside them."""
    inside = np.isin(cells, ids)
    return {"n_cells": int(len(ids)), "cell_area": int(inside.sum()),
            "image_sum": float(img[:, inside].astype(np.float64).sum())}


def accuracy(wells: pd.DataFrame, features: list[str]) -> tuple[float, int]:
    """The clusterings path for profiles, then LODO well accuracy: (accuracy, selected features)."""
    feats = [f for f in features if wells[f].notna().any()]
    out, kept = select_and_normalize(wells[metadata_columns(wells) + feats], feats)
    return float(lodo_accuracy(out, kept)["accuracy"]), len(kept)


def run(seed: int, wells_per_donor: int, sites_per_well: int, size: int, masks: str) -> dict:
    rows = {"curated": [], "cp_measure": []}
    checks = []
    secs = {"curated": 0.0, "cp_measure": 0.0}
    for meta, img, nuc, cel in simulated_sites(seed, wells_per_donor, sites_per_well, size, masks):
        for name, fn in (("curated", curated_cell_features), ("cp_measure", cell_features)):
            t = time.process_time()
            df = fn(img, nuc, cel, CHANNELS)
            secs[name] += time.process_time() - t
            rows[name].append({**meta, **site_profile(df).to_dict()})
        checks.append({**meta, **site_check(img, cel, df["ObjectNumber"].to_numpy())})
    wells = {k: well_embeddings(pd.DataFrame(v)) for k, v in rows.items()}
    full = feature_columns(wells["cp_measure"])
    fast = [f for f in full if not any(m in f for m in SLOW_MARKERS)]
    res = {"seed": seed, "n_sites": len(checks), "cells_per_site": float(np.mean([c["n_cells"] for c in checks])),
           "wells_cp": wells["cp_measure"], "checks": pd.DataFrame(checks), "seconds": secs}
    res["curated"] = accuracy(wells["curated"], feature_columns(wells["curated"]))
    res["cp_measure full"] = accuracy(wells["cp_measure"], full)
    res["cp_measure fast"] = accuracy(wells["cp_measure"], fast)
    return res


def one_thread() -> None:
    """One thread per process, as in the pipeline's site workers (``parallel._worker_init``):
    CPU seconds are then one core's."""
    import cv2
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    cv2.setNumThreads(1)
    os.environ["SSC_IMAGE_THREADS"] = "1"


def main() -> None:
    one_thread()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--wells", type=int, default=2, help="wells per donor")
    ap.add_argument("--sites", type=int, default=2, help="sites per well")
    ap.add_argument("--size", type=int, default=512, help="rendered site side (px)")
    ap.add_argument("--masks", choices=("segmentation", "truth"), default="segmentation",
                    help="the pipeline's masks or the simulator's own (the test's fixture uses truth)")
    ap.add_argument("--fixture", help="write the cp_measure well table of the first seed here (.csv.gz)")
    args = ap.parse_args()
    print(f"# profiles_separation: {len(default_donors())} donors x {args.wells} wells x {args.sites} sites "
          f"of {args.size}², {args.masks} masks (LODO linear SVM, well accuracy)")
    print("| seed | sites | cells/site | curated | cp_measure full | cp_measure fast | curated - full | "
          "CPU s curated / cp_measure |")
    print("|---|---|---|---|---|---|---|---|")
    for i, seed in enumerate(args.seeds):
        r = run(seed, args.wells, args.sites, args.size, args.masks)
        cur, full, fast = r["curated"], r["cp_measure full"], r["cp_measure fast"]
        print(f"| {seed} | {r['n_sites']} | {r['cells_per_site']:.1f} | {cur[0]:.3f} ({cur[1]} f.) | "
              f"{full[0]:.3f} ({full[1]} f.) | {fast[0]:.3f} ({fast[1]} f.) | {cur[0] - full[0]:+.3f} | "
              f"{r['seconds']['curated']:.1f} / {r['seconds']['cp_measure']:.1f} |", flush=True)
        if args.fixture and i == 0:
            checks = r["checks"].set_index(["Metadata_Well", "Metadata_Site"])
            table = r["wells_cp"].copy()
            table.attrs = {}
            table.to_csv(args.fixture, index=False, float_format="%.7g")
            checks[["n_cells", "cell_area", "image_sum"]].to_csv(args.fixture.replace(".csv", "_sites.csv"),
                                                                 float_format="%.10g")


if __name__ == "__main__":
    main()
