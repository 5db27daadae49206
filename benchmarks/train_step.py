"""Benchmark: images per second for each model on this machine's CPU (or CUDA when present).

    python benchmarks/train_step.py [--sizes thesis demo] [--steps 3] [--threads 2]

For each model family, at the thesis input size and at the demo size
(ssc_assets/demo_config.py): training steps (forward + backward + Adam step, batch 8, the
thesis' batch size) and inference (eval mode, no grad), images per second, best of
``--steps`` after one warm-up step. The naive reference for inference is the same model in
training mode with autograd (what a careless embedding loop would run): the ratio column.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ssc_assets.core.learn.models import ChannelAutoencoder, CustomClassifier, DenseNetClassifier, UNet, reconstruction_target
from ssc_assets.demo_config import DEMO_MODEL_CONFIG


def families(size: str):
    demo = size == "demo"
    c, d, a, u = (DEMO_MODEL_CONFIG[k] for k in ("classifier_model", "densenet_model", "autoencoder_models", "segmentation_model"))
    yield ("custom classifier",
           (lambda: CustomClassifier(crop_size=c["crop_size"], n_blocks=c["n_blocks"], first_width=c["first_width"])) if demo else CustomClassifier,
           (3, c["crop_size"] if demo else 512), "classify")
    yield ("DenseNet-121", lambda: DenseNetClassifier(weights="none"), (3, d["crop_size"] if demo else 512), "classify")
    yield ("autoencoder (1 channel)",
           (lambda: ChannelAutoencoder(patch_size=a["patch_size"], widths=tuple(a["widths"]))) if demo else ChannelAutoencoder,
           (1, a["patch_size"] if demo else 256), "reconstruct")
    yield ("U-Net",
           (lambda: UNet(2, 2, base_channels=u["base_channels"], depth=u["depth"])) if demo else UNet,
           (2, u["tile_size"] if demo else 512), "segment")


def loss_of(model, x, task):
    if task == "classify":
        return F.binary_cross_entropy_with_logits(model(x), torch.ones(len(x)))
    if task == "reconstruct":
        return F.mse_loss(model(x), reconstruction_target(x))
    return F.cross_entropy(model(x), torch.zeros(len(x), *x.shape[2:], dtype=torch.long))


def rate(fn, n_images, steps):
    fn()
    best = float("inf")
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_images / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["demo", "thesis"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# train_step: device={dev}, threads={args.threads}, batch={args.batch}")
    print("| model | input | train img/s | inference img/s | naive inference img/s | ratio |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        for name, make, (ch, side), task in families(size):
            torch.manual_seed(0)
            model = make().to(dev)
            opt = torch.optim.Adam(model.parameters(), lr=5e-5)
            x = torch.randn(args.batch, ch, side, side, device=dev)

            def step(model=model, opt=opt, x=x, task=task):
                model.train()
                opt.zero_grad()
                loss_of(model, x, task).backward()
                opt.step()

            def infer(model=model, x=x):
                model.eval()
                with torch.inference_mode():
                    model(x)

            def naive(model=model, x=x):
                model.train()
                model(x).sum()

            tr, inf, nv = rate(step, args.batch, args.steps), rate(infer, args.batch, args.steps), rate(naive, args.batch, args.steps)
            print(f"| {name} | {ch}x{side}² ({size}) | {tr:.1f} | {inf:.1f} | {nv:.1f} | {inf / nv:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
