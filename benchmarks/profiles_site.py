"""Benchmark: CellProfiler-style profiles of one simulated 2048² site, curated vs cp_measure.

    python benchmarks/profiles_site.py               # feature sets
    python benchmarks/profiles_site.py --families    # plus cp_measure's cost per feature family

Masks from the real chain (preprocessing + segmentation), then per-cell features on the
1536² crop: ``cell_features`` (cp_measure; full and ``fast``, at full resolution and at
pyramid level 1, 2x down) and ``curated_cell_features`` (level 0 and 1). Seconds are CPU
seconds of this process (``time.process_time``, one core: cp_measure and the curated set are
single-threaded), so that other load on the machine inflates them less than wall time; the
load average is printed with the table.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
import warnings

import numpy as np

from ssc_assets.core.analysis.profile_features import curated_cell_features
from ssc_assets.core.analysis.profiles import COSTES_SCALE_MAX, _common_labels, cell_features, scale_channels
from ssc_assets.core.image.filters import preprocess_channel
from ssc_assets.core.image.segmentation import compute_masks
from ssc_assets.core.simulate import render_site

CHANNELS = ("nuclei", "borders", "actin")


def site(size: int):
    imgs, _ = render_site(7, size, 0.4)
    pre = {c: preprocess_channel(imgs[c].astype(np.float32) - 100, c) for c in CHANNELS}
    m = compute_masks(pre["nuclei"], pre["borders"], pre["actin"])
    return np.stack([pre[c] for c in CHANNELS]), m["nuclei"], m["cells"]


def families(img: np.ndarray, nuclei: np.ndarray, cells: np.ndarray) -> None:
    """cp_measure CPU seconds per family (both object sets, all channels / channel pairs)."""
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    scaled, _ = scale_channels(img)
    _, nuc, cel = _common_labels(nuclei, cells)
    core, corr = get_core_measurements(), get_correlation_measurements()
    rows = []
    warnings.simplefilter("ignore")
    for fam in ("sizeshape", "zernike", "feret"):
        t, nf = time.process_time(), 0
        for lab in (nuc, cel):
            nf += len(core[fam](lab, None))
        rows.append((fam, "Nuclei, Cells", time.process_time() - t, nf))
    for fam in ("intensity", "radial_distribution", "texture", "granularity"):
        t, nf = time.process_time(), 0
        for lab in (nuc, cel):
            for c in range(len(CHANNELS)):
                nf += len(core[fam](lab, scaled[c]))
        rows.append((fam, "Nuclei, Cells x 3 channels", time.process_time() - t, nf))
    for fam in ("pearson", "manders_fold", "rwc", "costes"):
        t, nf = time.process_time(), 0
        for a, b in itertools.combinations(range(len(CHANNELS)), 2):
            kw = {"scale_max": COSTES_SCALE_MAX} if fam == "costes" else {}
            nf += len(corr[fam](scaled[a], scaled[b], cel, **kw))
        rows.append((fam, "Cells x 3 channel pairs", time.process_time() - t, nf))
    total = sum(r[2] for r in rows)
    print(f"\n# cp_measure per feature family (CPU s, load average {os.getloadavg()[0]:.1f})")
    print("| family | calls on | CPU s per site | share | features |")
    print("|---|---|---|---|---|")
    for fam, on, s, nf in sorted(rows, key=lambda r: -r[2]):
        print(f"| {fam} | {on} | {s:.2f} | {100 * s / total:.0f} % | {nf} |")
    print(f"| total | | {total:.2f} | 100 % | {sum(r[3] for r in rows)} |")


def one_thread() -> None:
    """One thread per process, as in the pipeline's site workers (``parallel._worker_init``):
    CPU seconds are then one core's."""
    import cv2
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    cv2.setNumThreads(1)
    os.environ["SSC_IMAGE_THREADS"] = "1"


def main() -> None:
    one_thread()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--families", action="store_true", help="also time cp_measure per feature family")
    args = ap.parse_args()
    img, nuc, cel = site(args.size)
    down = (img[:, ::2, ::2], nuc[::2, ::2], cel[::2, ::2])
    print(f"# profiles_site: {img.shape[1]}² site, {cel.max()} cells, one core, CPU seconds "
          f"(load average at start {os.getloadavg()[0]:.1f})")
    cases = [
        ("cp_measure, level 0, full", lambda: cell_features(img, nuc, cel)),
        ("cp_measure, level 0, fast", lambda: cell_features(img, nuc, cel, fast=True)),
        ("cp_measure, level 1, full", lambda: cell_features(*down)),
        ("curated, level 0 (default)", lambda: curated_cell_features(img, nuc, cel)),
        ("curated, level 1", lambda: curated_cell_features(*down, downsample=2.0)),
    ]
    rows = []
    for name, fn in cases:
        t, w = time.process_time(), time.perf_counter()
        df = fn()
        rows.append((name, time.process_time() - t, time.perf_counter() - w, df.shape[1] - 1))
    ref = rows[0][1]
    print("| setting | CPU s per site | wall s | features | ratio vs cp_measure full | 384-site plate on 2 workers |")
    print("|---|---|---|---|---|---|")
    for name, cpu, wall, nf in rows:
        print(f"| {name} | {cpu:.2f} | {wall:.2f} | {nf} | {cpu / ref:.3f} | {384 * cpu / 2 / 60:.1f} min |")
    print(f"(load average at end {os.getloadavg()[0]:.1f})")
    if args.families:
        families(img, nuc, cel)


if __name__ == "__main__":
    main()
