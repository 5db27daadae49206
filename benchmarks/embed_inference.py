"""Benchmark: site-embedding inference per model family (thesis input sizes, random weights).

    python benchmarks/embed_inference.py [--sites 8] [--families classifier densenet autoencoder]

Inference only (the site reads are the same either way), on random crops, one batch of
``--sites`` sites. "before": ``torch.no_grad()``, torch's default thread count, contiguous
tensors (the previous ``embed_sites``); "after": ``inference_mode`` with 1 and 2 threads,
each with and without channels_last. Seconds per site (wall, best of ``--repeats``), and the
largest absolute difference from the before-embedding.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from ssc_assets.core.learn.embeddings import _memory_format, inference_context
from ssc_assets.core.learn.models import ChannelAutoencoder, CustomClassifier, DenseNetClassifier


def families(names):
    torch.manual_seed(0)
    out = {}
    if "classifier" in names:
        out["classifier (custom CNN, 3x512²)"] = (CustomClassifier(3, 512).eval(), (3, 512))
    if "densenet" in names:
        out["densenet (DenseNet-121, 3x512²)"] = (DenseNetClassifier(weights="none").eval(), (3, 512))
    if "autoencoder" in names:
        out["autoencoder (3 x 1x256²)"] = ([ChannelAutoencoder(256).eval() for _ in range(3)], (3, 256))
    return out


def run(model, x, fmt):
    if isinstance(model, list):
        return torch.cat([m.encode(x[:, i : i + 1].contiguous(memory_format=fmt)) for i, m in enumerate(model)], 1)
    return model.embed(x.contiguous(memory_format=fmt))


def timed(model, x, fmt, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = run(model, x, fmt)
        best = min(best, time.perf_counter() - t)
    return best / len(x), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--families", nargs="+", default=["classifier", "densenet", "autoencoder"])
    args = ap.parse_args()
    print(f"# embed_inference: {args.sites} sites per batch, cores={os.cpu_count()}, "
          f"torch default threads={torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print("| family | before (no_grad, default threads) | 1 thread | 1 thread + channels_last "
          "| 2 threads | 2 threads + channels_last | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    cl, cf = torch.channels_last, torch.contiguous_format
    for name, (model, (c, s)) in families(args.families).items():
        x = torch.randn(args.sites, c, s, s)
        with torch.no_grad():
            run(model, x[:1], cf)  # warm-up
            t0, ref = timed(model, x, cf, args.repeats)
        cells, diff = [], 0.0
        for threads in (1, 2):
            for fmt in (cf, cl):
                mods = model if isinstance(model, list) else [model]
                with inference_context(threads):
                    ctxs = [_memory_format(m, fmt) for m in mods]
                    for ctx in ctxs:
                        ctx.__enter__()
                    try:
                        t, out = timed(model, x, fmt, args.repeats)
                    finally:
                        for ctx in ctxs:
                            ctx.__exit__(None, None, None)
                diff = max(diff, float((out - ref).abs().max()))
                cells.append(t)
        print(f"| {name} | {t0:.3f} | " + " | ".join(f"{t:.3f}" for t in cells) + f" | {diff:.1e} |")


if __name__ == "__main__":
    main()
