"""Every launchpad setting that maps to a core parameter object reaches it: each field set to a
non-default value changes the core object it names (no dead settings)."""

import dataclasses

import pytest

from ssc_assets.core.ingest.qc import QcConfig
from ssc_assets.defs.image_assets import MasksConfig, PreprocessConfig
from ssc_assets.defs.ingest_assets import SiteQcConfig
from ssc_assets.defs.model_assets import TrainConfig

# fields consumed by the asset body itself (checks, figures), not by a core parameter object
ASSET_ONLY = {"max_failed_fraction", "n_gallery", "n_preview", "n_overlays", "register_model", "augmentation_factor",
              "split_by", "reference_pixel_size_um"}  # the last one is applied per site in corrected_images


def _bumped(cfg_cls, name):
    field = cfg_cls.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 1.5 + 0.01
    if name == "device":
        return "cpu"
    if name == "max_seconds":  # default None (no cap)
        return 60.0
    if name == "crop_size":
        return 100
    raise AssertionError(f"no test value for {cfg_cls.__name__}.{name} = {default!r}")


def _core(cfg):
    if isinstance(cfg, MasksConfig):
        return cfg.to_core(0.5)
    return cfg.to_core()


CASES = [(cls, name) for cls in (SiteQcConfig, PreprocessConfig, MasksConfig, TrainConfig)
         for name in cls.model_fields if name not in ASSET_ONLY]


@pytest.mark.parametrize("cls, name", CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_setting_reaches_core(cls, name):
    base = _core(cls())
    changed = _core(cls(**{name: _bumped(cls, name)}))
    assert changed != base, f"{cls.__name__}.{name} does not reach the core parameters"


def test_site_qc_defaults_are_the_core_defaults():
    cfg = SiteQcConfig().to_core()
    assert cfg == QcConfig()
    shared = {f.name for f in dataclasses.fields(QcConfig)} & set(SiteQcConfig.model_fields)
    assert len(shared) >= 8
