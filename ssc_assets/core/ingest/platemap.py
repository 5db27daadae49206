"""Plate maps: ``platemap.csv`` with one row per well (``well,donor_id,condition,group`` + extras)."""

from __future__ import annotations

import os
import re

import pandas as pd

from ssc_assets.core.ingest.acquisition import ACQUISITION_COLUMNS
from ssc_assets.core.ingest.metaxpress import normalize_well

REQUIRED_COLUMNS = ("well", "donor_id", "condition", "group")
#: Optional columns the pipeline reads (acquisition fallbacks, see ``acquisition.fill_acquisition``);
#: kept as ``Metadata_objective`` / ``Metadata_pixel_size_um`` whatever their case in the file.
OPTIONAL_COLUMNS = ("objective", "pixel_size_um")
#: Names of columns the pipeline creates itself (as ``Metadata_<name>``): an extra plate-map
#: column with one of these names (any case / whitespace) would clash with them.
RESERVED_COLUMNS = (
    "Plate", "Well", "Row", "Column", "Site", "TimePoint", "Donor", "Condition", "Group",
    *(c.removeprefix("Metadata_") for c in ACQUISITION_COLUMNS),
    "AcquisitionGroup",
)
CONDITIONS = {"HC": "HC", "SSC": "SSc"}
GROUPS = {"HC", "SSC", "SSCHL"}


class PlateMapError(ValueError):
    """The plate map cannot be used. The message names the file and what is wrong."""


def _norm(name: str) -> str:
    """Column name compared without case and whitespace."""
    return re.sub(r"\s+", "", name).lower()


def _read_table(path: str) -> pd.DataFrame:
    """The CSV with its header row as column names, exactly as written (pandas would rename a
    repeated name to ``name.1``); fully empty unnamed columns (trailing commas) are dropped."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, header=None)
    except pd.errors.EmptyDataError as exc:
        raise PlateMapError(f"{path}: the file is empty (expected a header row well,donor_id,condition,group "
                            "and one row per well)") from exc
    except Exception as exc:  # noqa: BLE001 - any parse failure is a user error
        raise PlateMapError(f"{path}: cannot parse CSV ({exc})") from exc
    names = [str(c).strip() for c in raw.iloc[0]]
    df = raw.iloc[1:].reset_index(drop=True)
    df.columns = range(len(names))
    keep = []
    for i, name in enumerate(names):
        if name:
            keep.append(i)
        elif (df[i].str.strip() != "").any():
            raise PlateMapError(f"{path}: column {i + 1} has values but no name in the header row")
    df = df[keep]
    df.columns = [names[i] for i in keep]
    return df


def read_platemap(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a plate map.

    Returns a frame indexed by nothing, with columns ``Metadata_Well, Metadata_Donor,
    Metadata_Condition (HC|SSc), Metadata_Group (HC|SSC|SSCHL)`` followed by every extra column
    as ``Metadata_<name>`` (``objective`` / ``pixel_size_um`` in lower case). Raises
    :class:`PlateMapError` on an empty file or a plate map without wells, missing columns,
    column names that repeat (ignoring case and whitespace) or clash with a column the
    pipeline creates (:data:`RESERVED_COLUMNS`), bad well names, duplicate wells or unknown
    condition/group values.
    """
    path = str(path)
    df = _read_table(path)
    lower = _check_columns(path, df)
    if len(df) == 0:
        raise PlateMapError(f"{path}: no wells: the plate map has a header but no rows (one row per well is required)")
    df = df.rename(columns={lower[c]: c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in lower})
    errors = _normalize_rows(df)
    if errors:
        raise PlateMapError(f"{path}: " + "; ".join(errors))
    out = pd.DataFrame(
        {
            "Metadata_Well": df["well"],
            "Metadata_Donor": df["donor_id"].str.strip(),
            "Metadata_Condition": df["condition"],
            "Metadata_Group": df["group"],
        }
    )
    for c in df.columns:
        if c not in REQUIRED_COLUMNS:
            out[f"Metadata_{c}"] = df[c].values
    return out.sort_values("Metadata_Well").reset_index(drop=True)


def _check_columns(path: str, df: pd.DataFrame) -> dict[str, str]:
    """``{normalized name: column}``; raises :class:`PlateMapError` on repeated, missing or
    reserved column names."""
    by_norm: dict[str, list[str]] = {}
    for c in df.columns:
        by_norm.setdefault(_norm(c), []).append(c)
    repeated = [names for names in by_norm.values() if len(names) > 1]
    if repeated:
        raise PlateMapError(
            f"{path}: column names repeat (case and spaces are ignored): "
            + "; ".join(" and ".join(repr(n) for n in names) for names in repeated)
            + "; keep one of each"
        )
    lower = {_norm(c): c for c in df.columns}
    missing = [c for c in REQUIRED_COLUMNS if c not in lower]
    if missing:
        raise PlateMapError(
            f"{path}: missing required column(s) {missing}; found {list(df.columns)} "
            f"(required: {list(REQUIRED_COLUMNS)})"
        )
    reserved = {_norm(r) for r in RESERVED_COLUMNS}
    allowed = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    clashes = [c for c in df.columns if _norm(c) in reserved and _norm(c) not in allowed]
    if clashes:
        raise PlateMapError(
            f"{path}: column(s) {clashes} clash with columns the pipeline creates "
            f"(reserved, any case: {', '.join(RESERVED_COLUMNS)}); rename them, e.g. "
            f"{', '.join(repr('platemap_' + c) for c in clashes)}"
        )
    return lower


def _normalize_rows(df: pd.DataFrame) -> list[str]:
    """Normalize ``well``, ``condition`` and ``group`` in place; the problems found, per row or value."""
    errors = []
    wells = []
    for i, w in enumerate(df["well"], start=2):
        try:
            wells.append(normalize_well(w))
        except ValueError:
            errors.append(f"line {i}: bad well {w!r}")
            wells.append(None)
    df["well"] = wells
    cond = df["condition"].str.strip().str.upper()
    bad_cond = sorted(set(df.loc[~cond.isin(CONDITIONS), "condition"]))
    if bad_cond:
        errors.append(f"unknown condition value(s) {bad_cond} (allowed: HC, SSc)")
    df["condition"] = cond.map(CONDITIONS)
    grp = df["group"].str.strip().str.upper()
    bad_grp = sorted(set(df.loc[~grp.isin(GROUPS), "group"]))
    if bad_grp:
        errors.append(f"unknown group value(s) {bad_grp} (allowed: HC, SSC, SSCHL)")
    df["group"] = grp
    inconsistent = df[(df["condition"] == "HC") != (df["group"] == "HC")]
    if len(inconsistent):
        errors.append(f"condition and group disagree for wells {inconsistent['well'].tolist()}")
    if (df["donor_id"].str.strip() == "").any():
        errors.append(f"empty donor_id for wells {df.loc[df['donor_id'].str.strip() == '', 'well'].tolist()}")
    dup = df["well"][df["well"].duplicated() & df["well"].notna()]
    if len(dup):
        errors.append(f"duplicate wells {sorted(set(dup))}")
    return errors
