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

from ssc_assets.core.simulate.metaseries import (  # noqa: F401
    HTD_HEADER,
)
from ssc_assets.core.simulate.plates import (  # noqa: F401
    load_site_truth,
    simulate_plate,
)
from ssc_assets.core.simulate.presets import (  # noqa: F401
    simulate_adversarial,
    simulate_demo,
    simulate_real_export,
)
from ssc_assets.core.simulate.render import (  # noqa: F401
    make_flatfield,
    render_site,
)
from ssc_assets.core.simulate.specs import (  # noqa: F401
    BACKGROUND,
    BLANK_BACKGROUND,
    CELL_SPACING_PX,
    CHANNELS,
    DEMO_OBJECTIVES,
    EXPOSURES_MS,
    FAILURES,
    OBJECTIVES,
    PEAK,
    PIXEL_SIZE_UM,
    PLATE_FAILURES,
    WAVE_NAMES,
    WAVELENGTHS_NM,
    DonorSpec,
    ObjectiveSpec,
    PlateSpec,
    default_donors,
    default_wells,
    strong_donors,
)
