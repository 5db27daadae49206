"""Illumination profiles per acquisition group on an objective-split plate (simulator truth).

Small but realistic field: 384 px with 4x4 binning (1.36 um/px, a 522 um field like a binned
ImageXpress export; cells keep their physical size) and exposures scaled by 1/16 so pixels
get the same counts as unbinned ones. Half the wells use the dim "ELWD-0.45-dim" objective
(4x less light, read noise 18, its own, stronger vignetting), camera offset 150, strong
phenotype, two artifact sites dropped as QC would. Each group's profile is built like the
``illumination_profiles`` asset does (``image_background`` per image,
``profile_from_backgrounds`` per group and channel) and compared with the group's true
flatfield. Seed 5 (the benchmark uses 11 and 12). Measured (RMS of estimate / truth - 1):
offset given <= 1.4 %, auto darkfield <= 0.4 % for nuclei and borders, one pooled
plate-wide profile (offset given) 8-15 % on the dim group. The actin channel (no cell-free background) is
checked with the offset given only: with 23 sites its auto offset comes from the per-image
regression, off by tens to hundreds of counts (see docs/illumination.md).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from ssc_assets.core.image import illumination as IL
from ssc_assets.core.io.tiff import read_image
from ssc_assets.core.simulate import FAILURES, PlateSpec, default_wells, load_site_truth, simulate_plate, strong_donors

SIZE, BINNING, SEED, OFFSET = 384, 4, 5, 150.0
CHANNELS = ("nuclei", "borders", "actin")
MAIN, DIM = "PlanApo-0.75", "ELWD-0.45-dim"
NAME = re.compile(r"_(?P<well>[A-P]\d{2})_s(?P<site>\d+)_w(?P<w>\d)")


def _rms(est: np.ndarray, true: np.ndarray) -> float:
    r = (est / est.mean()) / (true / true.mean()) - 1.0
    return float(np.sqrt(np.mean(r * r)))


@pytest.fixture(scope="module")
def split_plate(tmp_path_factory):
    """Per (objective, channel): background grids of the QC-passed images and true flatfield."""
    root = tmp_path_factory.mktemp("illum_groups")
    spec = PlateSpec(
        wells=default_wells(12), n_sites=4, n_channels=3, image_size=SIZE, binning=BINNING,
        exposure_scale=1.0 / BINNING**2, camera_offset=OFFSET, objective_split=0.5, second_objective=DIM,
        donors=strong_donors(), phenotype_gain=1.5, n_failed_sites=2, failure_kinds=FAILURES,
        include_thumbs=False, write_nuclei_labels=False,
    )
    simulate_plate(root / "plates", root / "truth", "SPLIT", spec, seed=SEED)
    truth = load_site_truth(root / "truth", "SPLIT")
    objective = {(r.Metadata_Well, r.Metadata_Site): r.objective for r in truth.itertuples() if not r.artifact}
    grids: dict[tuple[str, str], list[np.ndarray]] = {}
    for path in sorted((root / "plates" / "SPLIT").rglob("*.tif")):
        m = NAME.search(path.name)
        key = (m["well"], int(m["site"]))
        if key in objective:  # artifact sites are dropped, like QC does
            grids.setdefault((objective[key], CHANNELS[int(m["w"]) - 1]), []).append(
                IL.image_background(read_image(path, expected_shape=(SIZE, SIZE))))
    flat = {(o, ch): np.load(root / "truth" / "SPLIT" / f"flatfield_{o}_{ch}.npy") for o in (MAIN, DIM) for ch in CHANNELS}
    return grids, flat


def test_each_group_recovers_its_own_flatfield(split_plate):
    grids, flat = split_plate
    assert {o for o, _ in grids} == {MAIN, DIM}
    for (obj, ch), gs in grids.items():
        assert len(gs) >= 20
        assert gs[0].shape == (2, 48, 48) and gs[0].dtype == np.float32  # background + foreground grids
        given = IL.profile_from_backgrounds(gs, (SIZE, SIZE), darkfield=OFFSET)
        assert given.flatfield.shape == (SIZE, SIZE)
        assert _rms(given.flatfield, flat[(obj, ch)]) <= 0.03, (obj, ch)
        if ch == "actin":
            continue
        auto = IL.profile_from_backgrounds(gs, (SIZE, SIZE), darkfield="auto")
        # nuclei: same background in every image -> offset from the foreground level;
        # borders: background level moves with the phenotype -> per-image regression
        assert auto.darkfield_method == ("foreground" if ch == "nuclei" else "regression"), (obj, ch)
        assert abs(auto.darkfield - OFFSET) <= 25, (obj, ch, auto.darkfield)
        assert _rms(auto.flatfield, flat[(obj, ch)]) <= 0.03, (obj, ch)


def test_group_profile_beats_one_plate_wide_profile_on_the_dim_objective(split_plate):
    grids, flat = split_plate
    for ch in CHANNELS:
        pooled = IL.profile_from_backgrounds(grids[(MAIN, ch)] + grids[(DIM, ch)], (SIZE, SIZE), darkfield=OFFSET)
        group = IL.profile_from_backgrounds(grids[(DIM, ch)], (SIZE, SIZE), darkfield=OFFSET)
        rms_pooled, rms_group = _rms(pooled.flatfield, flat[(DIM, ch)]), _rms(group.flatfield, flat[(DIM, ch)])
        assert rms_pooled >= 0.04 and rms_pooled >= 3 * rms_group, (ch, rms_pooled, rms_group)
