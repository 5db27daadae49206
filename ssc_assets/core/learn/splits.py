"""Train/validation/test splits grouped by donor (no donor in two splits), stratified by condition.

The thesis split by well, which puts replicate wells of the same donor into train and test
and so leaks the donor; ``group_by="well"`` reproduces it for comparison only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def grouped_split(
    table: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    group_by: str = "donor",
    seed: int = 0,
) -> pd.Series:
    """Assign every row to ``train`` / ``val`` / ``test``.

    ``table`` needs ``Metadata_Donor``, ``Metadata_Condition`` (and ``Metadata_Plate``,
    ``Metadata_Well`` for ``group_by="well"``). Groups (donors, or plate-wells) are shuffled
    per condition with ``seed`` and dealt to the splits so that each split receives about
    ``fractions`` of each condition's groups, with at least one group per split and condition
    when there are three or more. Returns a Series aligned with ``table.index``.
    """
    if group_by == "donor":
        groups = table["Metadata_Donor"].astype(str)
    elif group_by == "well":
        groups = table["Metadata_Plate"].astype(str) + "/" + table["Metadata_Well"].astype(str)
    else:
        raise ValueError(f"group_by must be 'donor' or 'well', not {group_by!r}")
    f = np.asarray(fractions, dtype=float)
    f = f / f.sum()
    cond_of = table.groupby(groups)["Metadata_Condition"].agg(lambda s: s.mode().iloc[0])
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for cond in sorted(cond_of.unique()):
        members = np.array(sorted(cond_of.index[cond_of == cond]))
        rng.shuffle(members)
        n = len(members)
        counts = np.floor(f * n).astype(int)
        if n >= 3:
            counts = np.maximum(counts, 1)
        while counts.sum() < n:  # give the remainder to the largest fractional parts
            counts[np.argmax(f * n - counts)] += 1
        while counts.sum() > n:
            counts[np.argmax(counts)] -= 1
        start = 0
        for split, c in zip(SPLITS, counts):
            for g in members[start : start + c]:
                assignment[g] = split
            start += c
    return groups.map(assignment).rename("split")


def grouped_folds(groups: pd.Series, labels: pd.Series, n_splits: int = 5, seed: int = 0):
    """Cross-validation folds with no group in both train and test (StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n = min(n_splits, groups.nunique())
    cv = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(groups)), labels, groups))
