"""Acquisition metadata of ImageXpress images and the acquisition groups derived from it.

ImageXpress (MetaXpress / MetaMorph) writes a MetaSeries XML document into the TIFF
ImageDescription of every image: objective (``_MagSetting_``), its NA (``_MagNA_``), the
pixel size with binning applied (``spatial-calibration-x``, um), the illumination setting
(``_IllumSetting_``), the emission wavelength, the acquisition time, the stage label and
position, and a free-text ``Description`` with ``Exposure: 15 ms`` and ``Binning: 4 x 4``.
Both ``<prop>`` and ``<custom-prop>`` elements occur, nested in ``PlaneInfo`` / ``MetaSeries``
/ ``SetInfo``; the parser reads every element with ``id`` and ``value`` wherever it is.

Sources, in order (column ``Metadata_AcquisitionSource``): ``metaseries`` (the XML),
``platemap`` (``objective`` / ``pixel_size_um`` columns of platemap.csv), ``default``
(:data:`DEFAULT_PIXEL_SIZE_UM`, objective "unknown"). The HTD contributes the wavelength
names when the XML is absent.

An *acquisition group* is a set of sites imaged with the same optics (objective, NA, pixel
size, binning) and, when every such subset is large enough, the same exposures. QC
statistics, illumination profiles and segmentation scale are computed per group: an
objective is a batch variable, never a QC failure.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from datetime import datetime

import numpy as np
import pandas as pd

#: Pixel size (um) assumed when neither the images nor the plate map give one: the
#: ImageXpress Micro Confocal 20x objective on its 2048 x 2048 sCMOS, unbinned (thesis).
DEFAULT_PIXEL_SIZE_UM = 0.34
#: Groups (optics x exposures) smaller than this fall back to optics-only groups.
MIN_GROUP_SITES = 8

#: Acquisition columns added to ``raw_sites`` (one value per image), with their meaning.
ACQUISITION_COLUMNS: dict[str, str] = {
    "Metadata_Objective": "objective name (_MagSetting_), e.g. '20X Plan Apo Lambda'",
    "Metadata_ObjectiveNA": "numerical aperture (_MagNA_)",
    "Metadata_PixelSizeUm": "pixel size in um, binning applied (spatial-calibration-x)",
    "Metadata_Binning": "camera binning (1, 2, 4)",
    "Metadata_ExposureMs": "exposure time in ms",
    "Metadata_Illumination": "illumination setting (_IllumSetting_) or HTD wave name",
    "Metadata_WavelengthNm": "emission wavelength in nm",
    "Metadata_AcquisitionTime": "acquisition time (ISO 8601, local)",
    "Metadata_StageLabel": "stage label, e.g. 'E07 : Site 1'",
    "Metadata_StageXUm": "stage position x (um)",
    "Metadata_StageYUm": "stage position y (um)",
    "Metadata_StageZUm": "focus position z (um)",
    "Metadata_BitDepth": "bits per pixel of the camera",
    "Metadata_AcquisitionSource": "where the pixel size/objective came from: metaseries, platemap or default",
}

_NUMERIC = {"Metadata_ObjectiveNA", "Metadata_PixelSizeUm", "Metadata_ExposureMs", "Metadata_WavelengthNm",
            "Metadata_StageXUm", "Metadata_StageYUm", "Metadata_StageZUm"}
_INTEGER = {"Metadata_Binning", "Metadata_BitDepth"}

_PROP_RE = re.compile(r'<(?:custom-)?prop\s+[^>]*?id="([^"]*)"[^>]*?value="([^"]*)"', re.IGNORECASE)
_EXPOSURE_RE = re.compile(r"Exposure:\s*([0-9.]+)\s*(ms|s|us|µs)?", re.IGNORECASE)
_BINNING_RE = re.compile(r"Binning:\s*(\d+)\s*x\s*(\d+)", re.IGNORECASE)


def metaseries_props(description: str | None) -> dict[str, str]:
    """Every ``id -> value`` of a MetaSeries XML description (``prop`` and ``custom-prop``,
    any nesting). Falls back to a regex scan when the XML is malformed. Empty dict when
    ``description`` is not MetaSeries XML."""
    if not description or "<MetaData" not in description:
        return {}
    props: dict[str, str] = {}
    try:
        root = ET.fromstring(description.strip().strip("\x00"))
        for el in root.iter():
            key, value = el.get("id"), el.get("value")
            if key is not None and value is not None:
                props.setdefault(key, value)
    except ET.ParseError:
        for key, value in _PROP_RE.findall(description):
            props.setdefault(key, html.unescape(value))
    return props


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    m = re.search(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", str(text))
    return float(m.group()) if m else None


def _time(text: str | None) -> str | None:
    """MetaSeries ``20240314 10:21:33.412`` -> ISO ``2024-03-14T10:21:33.412000``."""
    if not text:
        return None
    for fmt in ("%Y%m%d %H:%M:%S.%f", "%Y%m%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text.strip(), fmt).isoformat()
        except ValueError:
            continue
    return text.strip()


def parse_acquisition(description: str | None) -> dict[str, object]:
    """Acquisition metadata of one image from its ImageDescription (no pixel read).

    Returns the :data:`ACQUISITION_COLUMNS` keys that the XML provides (others absent);
    ``Metadata_AcquisitionSource`` is ``"metaseries"`` when a pixel size or objective was
    found. Pixel size is converted to um when the calibration unit is nm or mm.
    """
    props = metaseries_props(description)
    if not props:
        return {}
    lower = {k.lower(): v for k, v in props.items()}
    out: dict[str, object] = {}
    _optics(lower, out)
    _camera(lower, html.unescape(lower.get("description", "")), out)
    _stage(lower, out)
    if (bits := _float(lower.get("bits-per-pixel"))) is not None:
        out["Metadata_BitDepth"] = int(bits)
    if "Metadata_PixelSizeUm" in out or "Metadata_Objective" in out:
        out["Metadata_AcquisitionSource"] = "metaseries"
    return out


def _optics(lower: dict[str, str], out: dict[str, object]) -> None:
    """Objective, NA and pixel size (in um) into ``out``."""
    if lower.get("_magsetting_"):
        out["Metadata_Objective"] = lower["_magsetting_"].strip()
    if (na := _float(lower.get("_magna_"))) is not None:
        out["Metadata_ObjectiveNA"] = na
    px = _float(lower.get("spatial-calibration-x"))
    state = lower.get("spatial-calibration-state", "on").strip().lower()
    if px is not None and px > 0 and state not in ("off", "false", "0"):
        unit = lower.get("spatial-calibration-units", "um").strip().lower()
        out["Metadata_PixelSizeUm"] = px * {"nm": 1e-3, "mm": 1e3, "m": 1e6}.get(unit, 1.0)


def _camera(lower: dict[str, str], text: str, out: dict[str, object]) -> None:
    """Binning, exposure (ms), illumination setting and wavelength into ``out``; ``text`` is
    the unescaped free-text description, where older exports keep binning and exposure."""
    binning = _float(lower.get("camera-binning-x"))
    if binning is None and (m := _BINNING_RE.search(text)):
        binning = float(m.group(1))
    if binning is not None:
        out["Metadata_Binning"] = int(binning)
    exposure = None
    if m := _EXPOSURE_RE.search(text):
        exposure = float(m.group(1)) * {"s": 1e3, "us": 1e-3, "µs": 1e-3}.get((m.group(2) or "ms").lower(), 1.0)
    elif lower.get("exposure time"):
        exposure = _float(lower["exposure time"])
    if exposure is not None:
        out["Metadata_ExposureMs"] = exposure
    if lower.get("_illumsetting_"):
        out["Metadata_Illumination"] = lower["_illumsetting_"].strip()
    if (wl := _float(lower.get("wavelength"))) is not None:
        out["Metadata_WavelengthNm"] = wl


def _stage(lower: dict[str, str], out: dict[str, object]) -> None:
    """Acquisition time, stage label and stage position (um) into ``out``."""
    if t := _time(lower.get("acquisition-time-local")):
        out["Metadata_AcquisitionTime"] = t
    if lower.get("stage-label"):
        out["Metadata_StageLabel"] = lower["stage-label"].strip()
    for key, col in (("stage-position-x", "Metadata_StageXUm"), ("stage-position-y", "Metadata_StageYUm"),
                     ("z-position", "Metadata_StageZUm")):
        if (v := _float(lower.get(key))) is not None:
            out[col] = v


def acquisition_frame(descriptions: list[str | None]) -> pd.DataFrame:
    """One row per image with every :data:`ACQUISITION_COLUMNS` column (NaN/None if absent)."""
    rows = [parse_acquisition(d) for d in descriptions]
    df = pd.DataFrame(rows, columns=list(ACQUISITION_COLUMNS))
    for c in _NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in _INTEGER:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in set(ACQUISITION_COLUMNS) - _NUMERIC - _INTEGER:
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df


def fill_acquisition(table: pd.DataFrame, htd_wave_names: dict[int, str] | None = None) -> pd.DataFrame:
    """Fill missing acquisition values from the plate map, the HTD, then documented defaults.

    ``table`` has ``wavelength`` and the :data:`ACQUISITION_COLUMNS`; plate-map columns
    ``Metadata_objective`` / ``Metadata_pixel_size_um`` (lower-case: as read from
    platemap.csv) are used where the XML gave nothing. Binning defaults to 1, the bit depth
    to 16, the pixel size to :data:`DEFAULT_PIXEL_SIZE_UM` and the objective to "unknown".
    """
    t = table.copy()
    src = t["Metadata_AcquisitionSource"].astype(object)
    no_xml = src.isna()
    if "Metadata_pixel_size_um" in t:
        pm = pd.to_numeric(t["Metadata_pixel_size_um"], errors="coerce")
        use = t["Metadata_PixelSizeUm"].isna() & pm.notna() & (pm > 0)
        t.loc[use, "Metadata_PixelSizeUm"] = pm[use]
        src = src.where(~(use & no_xml), "platemap")
    if "Metadata_objective" in t:
        pm = t["Metadata_objective"].astype(object)
        use = t["Metadata_Objective"].isna() & pm.notna() & (pm.astype(str).str.strip() != "")
        t.loc[use, "Metadata_Objective"] = pm[use]
        src = src.where(~(use & src.isna()), "platemap")
    if htd_wave_names:
        names = t["wavelength"].map(htd_wave_names)
        use = t["Metadata_Illumination"].isna() & names.notna()
        t.loc[use, "Metadata_Illumination"] = names[use]
    t["Metadata_PixelSizeUm"] = t["Metadata_PixelSizeUm"].fillna(DEFAULT_PIXEL_SIZE_UM)
    t["Metadata_Binning"] = t["Metadata_Binning"].fillna(1).astype("Int64")
    t["Metadata_BitDepth"] = t["Metadata_BitDepth"].fillna(16).astype("Int64")
    t["Metadata_Objective"] = t["Metadata_Objective"].where(t["Metadata_Objective"].notna(), "unknown")
    t["Metadata_AcquisitionSource"] = src.where(src.notna(), "default")
    return t


SITE_KEY = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]


def _optics_label(objective: str, na: float, px: float, binning: int) -> str:
    parts = [str(objective)]
    if np.isfinite(na):
        parts.append(f"NA {na:g}")
    parts += [f"{px:.3g} um/px", f"bin {binning}"]
    return ", ".join(parts)


def assign_acquisition_groups(table: pd.DataFrame, min_group_sites: int = MIN_GROUP_SITES) -> pd.Series:
    """``Metadata_AcquisitionGroup`` for every row of ``table`` (one label per site).

    A site's optics = (objective, NA, pixel size rounded to 0.1 %, binning) of its images
    (the most frequent if its channels disagree). Exposures (one per channel) split an optics
    group further only when every resulting subgroup has at least ``min_group_sites`` sites;
    otherwise sites that differ only in exposure stay together. Labels read like
    ``"20X Plan Apo Lambda, NA 0.75, 0.34 um/px, bin 1"`` (+ ``", exp 50/150/100 ms"``).
    """
    t = table
    na = pd.to_numeric(t.get("Metadata_ObjectiveNA"), errors="coerce") if "Metadata_ObjectiveNA" in t else pd.Series(np.nan, index=t.index)
    px = pd.to_numeric(t["Metadata_PixelSizeUm"], errors="coerce").fillna(DEFAULT_PIXEL_SIZE_UM)
    optics = [
        _optics_label(o, a, float(f"{p:.4g}"), int(b))
        for o, a, p, b in zip(t["Metadata_Objective"].fillna("unknown"), na, px, t["Metadata_Binning"].fillna(1))
    ]
    frame = pd.DataFrame({"optics": optics, "channel": t["channel"].values,
                          "exposure": pd.to_numeric(t["Metadata_ExposureMs"], errors="coerce").values}, index=t.index)
    for c in SITE_KEY:
        frame[c] = t[c].values
    site_optics = frame.groupby(SITE_KEY)["optics"].agg(lambda s: s.value_counts().index[0])
    exp = frame.dropna(subset=["exposure"]).sort_values("channel")
    site_exp = exp.groupby(SITE_KEY).apply(
        lambda g: "/".join(f"{e:g}" for e in g["exposure"]), include_groups=False) if len(exp) else pd.Series(dtype=object)
    sites = site_optics.to_frame("optics")
    sites["exposure"] = site_exp.reindex(sites.index)
    label = sites["optics"].copy()
    for opt, grp in sites.groupby("optics"):
        counts = grp["exposure"].fillna("").value_counts()
        if len(counts) > 1 and counts.min() >= min_group_sites:
            label.loc[grp.index] = opt + ", exp " + grp["exposure"].fillna("?") + " ms"
    key = pd.MultiIndex.from_frame(t[SITE_KEY])
    return pd.Series(label.reindex(key).values, index=t.index, name="Metadata_AcquisitionGroup")


def group_slug(label: str) -> str:
    """File-system-safe short name of an acquisition group label."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-").lower()[:80] or "group"


def acquisition_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per acquisition group: objective, NA, pixel size, binning, source, wells and sites."""
    sites = table.drop_duplicates(SITE_KEY)
    rows = []
    for label, g in sites.groupby("Metadata_AcquisitionGroup", sort=False):
        wells = sorted(g["Metadata_Well"].unique())
        rows.append({
            "acquisition group": label,
            "objective": g["Metadata_Objective"].iloc[0],
            "pixel size (um)": round(float(g["Metadata_PixelSizeUm"].iloc[0]), 4),
            "binning": int(g["Metadata_Binning"].iloc[0]),
            "source": ", ".join(sorted(g["Metadata_AcquisitionSource"].astype(str).unique())),
            "n wells": len(wells),
            "n sites": len(g),
            "wells": _well_ranges(wells),
        })
    return pd.DataFrame(rows).sort_values("n sites", ascending=False).reset_index(drop=True) if rows else pd.DataFrame()


def _well_ranges(wells: list[str], limit: int = 24) -> str:
    text = ", ".join(wells[:limit])
    return text + (f", ... (+{len(wells) - limit})" if len(wells) > limit else "")


def channel_exposures(table: pd.DataFrame) -> pd.DataFrame:
    """Exposure (ms) per acquisition group x channel: median and range, for the metadata."""
    if table["Metadata_ExposureMs"].isna().all():
        return pd.DataFrame()
    g = table.groupby(["Metadata_AcquisitionGroup", "channel"])["Metadata_ExposureMs"]
    out = g.agg(["median", "min", "max"]).reset_index()
    return out.rename(columns={"Metadata_AcquisitionGroup": "acquisition group", "median": "exposure ms (median)",
                               "min": "min ms", "max": "max ms"})
