"""Preset plate sets: demo, adversarial and a real-export look-alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssc_assets.core.simulate.plates import simulate_plate
from ssc_assets.core.simulate.specs import (
    DEMO_OBJECTIVES,
    FAILURES,
    PLATE_FAILURES,
    PlateSpec,
    default_wells,
    strong_donors,
)

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
