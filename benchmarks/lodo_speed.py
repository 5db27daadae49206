"""Speed of the leave-one-donor-out SVM behind ``donor_scores`` (its permutation test refits it
hundreds of times): :func:`donor_scores._lodo` vs the naive reference, the sklearn pipeline
(:func:`donor_scores._svm`, StandardScaler + SVC) refitted per held-out donor, on the same
synthetic wells (15 donors x 5 wells, ``--features`` features). Prints a table of ratios.
Rows "in fold": each fold first normalises the wells per batch (2 plates) against its own HC
wells (:class:`donor_scores.FoldNorm`, what ``donor_scores`` runs), on permuted labels as in the
permutation test; the reference recomputes every fold's statistics, ``_lodo`` caches those
of reference sets it has seen and skips sklearn's per-call checks.

    python benchmarks/lodo_speed.py [--features 16,156,768] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ssc_assets.core.analysis import donor_scores as DS


def reference(X, y, donors, C=1.0, norm=None):
    dec = np.full(len(y), np.nan)
    for d in np.unique(donors):
        te = donors == d
        Xf = norm.apply(X, (y == 0) & ~te, ~te) if norm is not None else X
        dec[te] = DS._svm(C).fit(Xf[~te], y[~te]).decision_function(Xf[te])
    return dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", default="16,156,768")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    donors = np.repeat([f"D{i:02d}" for i in range(15)], 5)
    y = (np.arange(75) >= 25).astype(int)
    print("| features | reference s / LODO | _lodo s / LODO | ratio | max abs diff |")
    print("|---|---|---|---|---|")
    batches = np.tile([0, 0, 1, 1, 1], 15)  # every donor's wells on both plates
    norm = DS.FoldNorm(batches)
    perm = np.repeat(rng.permutation((np.arange(15) >= 5).astype(int)), 5)
    for in_fold in (False, True):
        for f in (int(x) for x in a.features.split(",")):
            X = rng.normal(size=(75, f)) + y[:, None] * 0.5 + batches[:, None] * 2.0
            labels, nm = (perm, norm) if in_fold else (y, None)
            DS._lodo(X, labels, donors, 1.0, nm)  # warm-up (imports)
            t0 = time.perf_counter()
            for _ in range(a.repeats):
                ref = reference(X, labels, donors, norm=nm)
            t_ref = (time.perf_counter() - t0) / a.repeats
            t0 = time.perf_counter()
            for _ in range(a.repeats):
                mine = DS._lodo(X, labels, donors, 1.0, nm)
            t_mine = (time.perf_counter() - t0) / a.repeats
            print(f"| {f}{' in fold' if in_fold else ''} | {t_ref:.4f} | {t_mine:.4f} | {t_ref / t_mine:.2f}x "
                  f"| {np.abs(ref - mine).max():.1e} |")


if __name__ == "__main__":
    main()
