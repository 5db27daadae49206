"""MetaXpress plate files: HTD text, MetaSeries XML descriptions, stage positions."""

from __future__ import annotations

import uuid
from datetime import datetime
from xml.sax.saxutils import escape

import numpy as np

from ssc_assets.core.simulate.specs import OBJECTIVES, PIXEL_SIZE_UM, WAVE_NAMES, PlateSpec

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
