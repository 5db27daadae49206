"""Column roles of the well and site tables (core/schema.py)."""

import numpy as np
import pandas as pd

from ssc_assets.core.schema import ID_COLUMNS, OBJECT_NUMBER, feature_columns


def _reference(df, numeric, drop_all_nan):
    """The definition, one column at a time."""
    out = []
    for c in df.columns:
        if str(c).startswith("Metadata_") or c in ID_COLUMNS:
            continue
        s = df[c]
        if numeric and (not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            continue
        if drop_all_nan and s.isna().all():
            continue
        out.append(c)
    return out


def test_feature_columns_match_the_column_by_column_definition():
    n = 6
    df = pd.DataFrame({
        "Metadata_Plate": ["P"] * n, "Metadata_Score": np.arange(n, dtype=float), OBJECT_NUMBER: np.arange(n),
        "f0000": np.arange(n, dtype=np.float32), "f0001": np.full(n, np.nan), "flag": [True, False] * 3,
        "label": list("abcdef"), "count": np.arange(n), "half": [np.nan] * 3 + [1.0] * 3,
    })
    for numeric in (False, True):
        for drop in (False, True):
            assert feature_columns(df, numeric=numeric, drop_all_nan=drop) == _reference(df, numeric, drop)
    assert feature_columns(df, numeric=True, drop_all_nan=True) == ["f0000", "count", "half"]
    assert feature_columns(df.iloc[:0], numeric=True, drop_all_nan=True) == []
