"""Simulation parameters: channels, objectives, donors, wells and the per-plate :class:`PlateSpec`."""

from __future__ import annotations

from dataclasses import dataclass, field

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
