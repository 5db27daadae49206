"""Column names and the one feature/metadata rule shared by every table in the project.

Rule: a column is *metadata* when its name starts with ``Metadata_`` (CellProfiler and
pycytominer convention); every other column except the per-object identifier
``ObjectNumber`` is a *feature*. Per-table bookkeeping columns are therefore also
``Metadata_``-prefixed (``Metadata_Method``, ``Metadata_n_sites``) so that no table
needs a list of exceptions.

Pure module (pandas only): no Dagster, no MLflow.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

META_PREFIX = "Metadata_"

# --- site identity -------------------------------------------------------------
PLATE = "Metadata_Plate"
WELL = "Metadata_Well"
SITE = "Metadata_Site"
ROW = "Metadata_Row"
COLUMN = "Metadata_Column"

# --- plate map ------------------------------------------------------------------
DONOR = "Metadata_Donor"
CONDITION = "Metadata_Condition"  # HC | SSc
GROUP = "Metadata_Group"  # HC | SSC | SSCHL

# --- acquisition ------------------------------------------------------------------
ACQUISITION_GROUP = "Metadata_AcquisitionGroup"
ACQUISITION_SOURCE = "Metadata_AcquisitionSource"
ACQUISITION_TIME = "Metadata_AcquisitionTime"
OBJECTIVE = "Metadata_Objective"
OBJECTIVE_NA = "Metadata_ObjectiveNA"
PIXEL_SIZE_UM = "Metadata_PixelSizeUm"
BINNING = "Metadata_Binning"
BIT_DEPTH = "Metadata_BitDepth"
EXPOSURE_MS = "Metadata_ExposureMs"
WAVELENGTH_NM = "Metadata_WavelengthNm"
ILLUMINATION = "Metadata_Illumination"

# --- embedding / profile tables ---------------------------------------------------------
METHOD = "Metadata_Method"  # embedding method (pca, autoencoder, classifier, densenet, profiles)
N_SITES = "Metadata_n_sites"  # QC-passed sites aggregated into a well row

# --- non-feature identifiers that are not Metadata_ (CellProfiler per-object tables) ---
OBJECT_NUMBER = "ObjectNumber"
ID_COLUMNS = frozenset({OBJECT_NUMBER})

# --- key lists ----------------------------------------------------------------------------
SITE_KEY = [PLATE, WELL, SITE]
WELL_KEY = [PLATE, WELL]
PLATEMAP_COLUMNS = [DONOR, CONDITION, GROUP]
SITE_META = [PLATE, WELL, SITE, DONOR, CONDITION, GROUP]  # identity + plate map of a site row
WELL_META = [PLATE, WELL, DONOR, CONDITION, GROUP]  # identity + plate map of a well row
#: Site/well metadata carried when present: the acquisition group (objective, NA, pixel size,
#: binning) batch normalisation and the batch V-measures group by; whether the ``cells``
#: champion was trained on the donor.
OPTIONAL_META = [ACQUISITION_GROUP, "Metadata_DonorTrained"]
#: ``cells`` sites: True when the donor was in the champion's training data (its own score is then in-sample).
DONOR_TRAINED = "Metadata_DonorTrained"
#: Per-site numeric metadata of the cell method and how a well aggregates it over its sites.
WELL_AGGREGATES = {"Metadata_Score": "median", "Metadata_n_cells": "sum"}


def site_meta(df) -> list[str]:
    """:data:`SITE_META` + the :data:`OPTIONAL_META` columns ``df`` has."""
    return SITE_META + [c for c in OPTIONAL_META if c in df.columns]


def is_metadata(col) -> bool:
    """True when ``col`` is a metadata column (name starts with ``Metadata_``)."""
    return str(col).startswith(META_PREFIX)


def is_feature(col) -> bool:
    """True when ``col`` is a feature column: not metadata and not an object identifier."""
    return not is_metadata(col) and col not in ID_COLUMNS


def metadata_columns(df: pd.DataFrame | Iterable) -> list:
    """The metadata columns of ``df`` (or of an iterable of column names), in order."""
    cols = df.columns if isinstance(df, pd.DataFrame) else df
    return [c for c in cols if is_metadata(c)]


def feature_columns(df: pd.DataFrame, *, numeric: bool = False, drop_all_nan: bool = False) -> list:
    """The feature columns of ``df`` in order (every column that :func:`is_feature`).

    ``numeric``: keep only numeric, non-boolean columns (non-numeric ones cannot be features
    of a distance/classifier). ``drop_all_nan``: skip columns that are entirely NaN.
    """
    keep = [i for i, (c, t) in enumerate(zip(df.columns, df.dtypes)) if is_feature(c) and (
        not numeric or (pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)))]
    if drop_all_nan and keep:  # one vectorised pass: a wide table (every method's columns) has thousands
        present = df.iloc[:, keep].notna().any(axis=0).to_numpy()
        keep = [i for i, ok in zip(keep, present) if ok]
    return [df.columns[i] for i in keep]
