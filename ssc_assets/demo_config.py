"""The demo's model settings, in one place: small inputs and few epochs so that `make demo`
trains every model in a few minutes on 2 CPU cores. The asset Configs' defaults stay the
thesis' (512 crops, 256 patches, 30 epochs, x5 augmentation).

The demo plates' corrected sites are 384 px (512 px simulated images, centre crop 0.75).
"""

from __future__ import annotations

from ssc_assets.defs.model_families import TRAINING_ASSETS

DEMO_TRAIN = {"epochs": 4, "augmentation_factor": 2, "batch_size": 8, "lr": 1e-3}

# Wall-time caps (s) of the whole-site trainings, so that the demo's time does not grow with
# the number of plates and wells (a training that reaches its cap validates the epoch it is in
# and stops; MLflow param `stopped` says "time"). The autoencoders' cap is per channel.
DEMO_MODEL_CONFIG: dict[str, dict] = {
    "classifier_model": {**DEMO_TRAIN, "crop_size": 128, "n_blocks": 5, "first_width": 64, "max_seconds": 75.0},
    "densenet_model": {**DEMO_TRAIN, "epochs": 2, "crop_size": 96, "max_seconds": 75.0},
    "autoencoder_models": {**DEMO_TRAIN, "patch_size": 64, "widths": [64, 32, 16, 8], "max_seconds": 25.0},
    "segmentation_model": {**DEMO_TRAIN, "tile_size": 128, "base_channels": 8, "depth": 3, "max_seconds": 50.0},
    "pca_model": {"n_components": 64, "size": 32},
    "clusterings": {"null_size": 2000},
    # p-values down to 1/101 (< 0.01) instead of 1/201: ~20 s less on a 2 x 39-well study
    "donor_scores": {"n_permutations": 100},
}


JOB_ASSETS = {
    "train_models": TRAINING_ASSETS,
    "embed_plate": ["site_embeddings_profiles"],
    "cluster_plates": ["clusterings", "donor_scores"],
}


def demo_run_config(job: str = "train_models") -> dict:
    """Run config with the demo settings for the assets of ``job``."""
    ops = {k: {"config": v} for k, v in DEMO_MODEL_CONFIG.items() if k in JOB_ASSETS[job]}
    return {"ops": ops, "loggers": {"console": {"config": {"log_level": "INFO"}}}}
