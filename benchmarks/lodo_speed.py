"""Speed of the leave-one-donor-out SVM behind ``donor_scores`` (its permutation test refits it
hundreds of times): :func:`donor_scores._lodo` vs the naive reference, the sklearn pipeline
(:func:`donor_scores._svm`, StandardScaler + SVC) refitted per held-out donor, on the same
synthetic wells (15 donors x 5 wells, ``--features`` features). Prints a table of ratios.

    python benchmarks/lodo_speed.py [--features 16,156,768] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ssc_assets.core.analysis import donor_scores as DS


def reference(X, y, donors, C=1.0):
    dec = np.full(len(y), np.nan)
    for d in np.unique(donors):
        te = donors == d
        dec[te] = DS._svm(C).fit(X[~te], y[~te]).decision_function(X[te])
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
    for f in (int(x) for x in a.features.split(",")):
        X = rng.normal(size=(75, f)) + y[:, None] * 0.5
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            ref = reference(X, y, donors)
        t_ref = (time.perf_counter() - t0) / a.repeats
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            mine = DS._lodo(X, y, donors, 1.0)
        t_mine = (time.perf_counter() - t0) / a.repeats
        print(f"| {f} | {t_ref:.4f} | {t_mine:.4f} | {t_ref / t_mine:.2f}x | {np.abs(ref - mine).max():.1e} |")


if __name__ == "__main__":
    main()
