"""Figures of a model fit (PNG bytes, logged to MLflow): learning curves, test confusion
matrix, autoencoder reconstructions and U-Net segmentation overlays."""

from __future__ import annotations

import numpy as np
import torch

from ssc_assets.core.plots.figures import fig_to_png


def curves_png(history: list[dict], title: str) -> bytes:
    import matplotlib.pyplot as plt

    ep = np.arange(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(ep, [h["train_loss"] for h in history], label="train")
    ax.plot(ep, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return fig_to_png(fig)


def confusion_png(m: np.ndarray) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks([0, 1], ["HC", "SSc"])
    ax.set_yticks([0, 1], ["HC", "SSc"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test confusion matrix", fontsize=9)
    return fig_to_png(fig)


def reconstruction_png(model, ds, n: int = 4) -> bytes:
    import matplotlib.pyplot as plt

    from ssc_assets.core.learn.models import reconstruction_target

    model.eval()
    n = min(n, len(ds))
    fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 6.6), squeeze=False)
    with torch.no_grad():
        for j in range(n):
            x = ds[j][0][None]
            p = model(x)[0, 1].numpy()
            t = reconstruction_target(x)[0, 1].numpy()
            for i, (img, name) in enumerate([(x[0, 0].numpy(), "input"), (t, "target P(object)"), (p, "output P(object)")]):
                axes[i, j].imshow(img, cmap="gray")
                axes[i, j].set_title(name, fontsize=7)
                axes[i, j].axis("off")
    return fig_to_png(fig)


def segmentation_png(model, ds, n: int = 3) -> bytes:
    import matplotlib.pyplot as plt

    model.eval()
    n = min(n, len(ds))
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n), squeeze=False)
    with torch.no_grad():
        for i in range(n):
            x, mask, _ = ds[i]
            pred = model(x[None]).argmax(1)[0].numpy()
            for j, (img, name) in enumerate([(x[1].numpy(), "actin (input)"), (mask.numpy(), "actin inside cells"), (pred, "U-Net")]):
                axes[i, j].imshow(img, cmap="gray")
                axes[i, j].set_title(name, fontsize=7)
                axes[i, j].axis("off")
    return fig_to_png(fig)
