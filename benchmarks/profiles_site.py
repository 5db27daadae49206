"""Benchmark: CellProfiler-style profiles (cp_measure) of one simulated 2048² site.

    python benchmarks/profiles_site.py

Masks from the real chain (preprocessing + segmentation), then ``cell_features`` on the
1536² crop at full resolution (full and ``fast``) and at pyramid level 1 (2x down), one core.
"""

from __future__ import annotations

import time

import numpy as np

from ssc_assets.core.analysis.profiles import cell_features
from ssc_assets.core.image.filters import preprocess_channel
from ssc_assets.core.image.segmentation import compute_masks
from ssc_assets.core.simulate import render_site


def main() -> None:
    imgs, _ = render_site(7, 2048, 0.4)
    pre = {c: preprocess_channel(imgs[c].astype(np.float32) - 100, c) for c in ("nuclei", "borders", "actin")}
    m = compute_masks(pre["nuclei"], pre["borders"], pre["actin"])
    img = np.stack([pre[c] for c in ("nuclei", "borders", "actin")])
    print(f"# profiles_site: {img.shape[1]}² site, {m['cells'].max()} cells, 1 core")
    print("| setting | seconds per site | features | 384-site plate on 2 workers |")
    print("|---|---|---|---|")
    cases = [("level 0, full (default)", img, m["nuclei"], m["cells"], False),
             ("level 0, fast", img, m["nuclei"], m["cells"], True),
             ("level 1, full", img[:, ::2, ::2], m["nuclei"][::2, ::2], m["cells"][::2, ::2], False)]
    for name, im, nuc, cel, fast in cases:
        t = time.perf_counter()
        df = cell_features(im, nuc, cel, fast=fast)
        dt = time.perf_counter() - t
        print(f"| {name} | {dt:.1f} | {df.shape[1] - 1} | {384 * dt / 2 / 60:.0f} min |")


if __name__ == "__main__":
    main()
