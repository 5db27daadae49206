"""Plate maps: ``platemap.csv`` with one row per well (``well,donor_id,condition,group`` + extras)."""

from __future__ import annotations

import os

import pandas as pd

from ssc_assets.core.metaxpress import normalize_well

REQUIRED_COLUMNS = ("well", "donor_id", "condition", "group")
CONDITIONS = {"HC": "HC", "SSC": "SSc"}
GROUPS = {"HC", "SSC", "SSCHL"}


class PlateMapError(ValueError):
    """The plate map cannot be used. The message names the file and what is wrong."""


def read_platemap(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a plate map.

    Returns a frame indexed by nothing, with columns ``Metadata_Well, Metadata_Donor,
    Metadata_Condition (HC|SSc), Metadata_Group (HC|SSC|SSCHL)`` followed by every extra column
    as ``Metadata_<name>``. Raises :class:`PlateMapError` on missing columns, bad well names,
    duplicate wells or unknown condition/group values.
    """
    path = str(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a user error
        raise PlateMapError(f"{path}: cannot parse CSV ({exc})") from exc
    df.columns = [c.strip() for c in df.columns]
    lower = {c.lower(): c for c in df.columns}
    missing = [c for c in REQUIRED_COLUMNS if c not in lower]
    if missing:
        raise PlateMapError(
            f"{path}: missing required column(s) {missing}; found {list(df.columns)} "
            f"(required: {list(REQUIRED_COLUMNS)})"
        )
    df = df.rename(columns={lower[c]: c for c in REQUIRED_COLUMNS})
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
