"""One home per default: every launchpad ``Config`` field of ``ssc_assets/defs`` either takes its
default from the pure core (``core_field``: a core dataclass field, keyword default or constant)
and equals it, or is an asset-only setting listed here. A Config field given a literal default
of its own fails this test, and so does a core default the Config no longer matches.
"""

import dataclasses
import importlib
import inspect
import math
import pkgutil

import dagster as dg
import pytest

import ssc_assets.defs
from ssc_assets import settings
from ssc_assets.defs.core_defaults import core_default

#: Config fields used by the asset body only (checks, figures, registry, bookkeeping): their
#: default lives in the Config. Keyed by the class that declares the field.
ASSET_ONLY = {
    "IlluminationConfig": {"camera_offset",  # None = the core's darkfield="auto"
                           "min_sites_per_group"},
    "PreprocessConfig": {"max_failed_fraction", "n_preview"},
    "MasksConfig": {"max_failed_fraction", "n_overlays"},
    "ProfilesConfig": {"max_failed_fraction"},
    "SiteQcConfig": {"max_failed_fraction", "n_gallery"},
    "TrainConfig": {"register_model"},
    "PcaConfig": {"register_model"},
    "CropConfig": {"register_model"},
    "SweepConfig": {"model", "factors", "register_model"},
}


def _config_classes() -> list[type]:
    out = {}
    for mod in pkgutil.iter_modules(ssc_assets.defs.__path__):
        module = importlib.import_module(f"ssc_assets.defs.{mod.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (issubclass(cls, dg.Config) and cls.__module__.startswith("ssc_assets.defs")
                    and not issubclass(cls, (dg.ConfigurableResource, dg.ConfigurableIOManager))):
                out[cls.__qualname__] = cls
    return sorted(out.values(), key=lambda c: c.__name__)


CONFIGS = _config_classes()
FIELDS = [(cls, name) for cls in CONFIGS for name in cls.model_fields]


def _declared_by(cls, name) -> str:
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return klass.__name__
    return cls.__name__


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for s in settings.SETTINGS:  # env-backed defaults (e.g. SSC_DENSENET_WEIGHTS) at their unset value
        monkeypatch.delenv(s.name, raising=False)


def test_the_configs_are_found():
    names = {c.__name__ for c in CONFIGS}
    assert {"TrainConfig", "PcaConfig", "PreprocessConfig", "MasksConfig", "SiteQcConfig", "IlluminationConfig",
            "ClusteringConfig", "ProfilesConfig", "SweepConfig"} <= names


@pytest.mark.parametrize("cls, name", FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_config_default_is_the_core_default(cls, name):
    field = cls.model_fields[name]
    default = field.get_default(call_default_factory=True)
    ref = (field.json_schema_extra or {}).get("core")
    if ref is None:
        owner = _declared_by(cls, name)
        assert name in ASSET_ONLY.get(owner, set()) or name in ASSET_ONLY.get(cls.__name__, set()), (
            f"{cls.__name__}.{name} = {default!r} has a default of its own: read it from the core with core_field(...), "
            "or list it in ASSET_ONLY if only the asset body uses it")
        return
    assert default == _plain(core_default(ref)), f"{cls.__name__}.{name} = {default!r}, core {ref} = {core_default(ref)!r}"


def test_asset_only_list_is_current():
    for owner, names in ASSET_ONLY.items():
        cls = next(c for c in CONFIGS if c.__name__ == owner)
        for n in names:
            assert n in cls.model_fields and not (cls.model_fields[n].json_schema_extra or {}).get("core"), f"{owner}.{n}"


def test_default_configs_build_the_default_core_objects():
    from ssc_assets.core.image.filters import PreprocessParams
    from ssc_assets.core.image.segmentation import DEFAULT_NUCLEUS_DIAMETER_PX, MaskParams
    from ssc_assets.core.ingest.qc import QcConfig
    from ssc_assets.core.learn.loop import TrainParams
    from ssc_assets.defs.image_assets import MasksConfig, PreprocessConfig
    from ssc_assets.defs.ingest_assets import SiteQcConfig
    from ssc_assets.defs.model_assets import TrainConfig
    from ssc_assets.settings import train_threads

    assert TrainConfig().to_core() == TrainParams(threads=train_threads())  # threads: SSC_TRAIN_THREADS
    assert SiteQcConfig().to_core() == QcConfig()
    assert PreprocessConfig().to_core() == PreprocessParams()
    masks = MasksConfig().to_core()
    assert math.isclose(masks.nuclei.expected_diameter_px, DEFAULT_NUCLEUS_DIAMETER_PX)
    assert dataclasses.replace(masks, nuclei=MaskParams().nuclei) == MaskParams()


def test_cell_model_config_builds_the_cpu_preset():
    from ssc_assets.core.learn.cell_crops import CropParams
    from ssc_assets.core.learn.cell_training import CellTrainParams
    from ssc_assets.defs.cell_assets import CellModelConfig
    from ssc_assets.settings import train_threads

    config = CellModelConfig()
    assert config.to_core() == CellTrainParams.cpu(threads=train_threads())
    assert config.crop_params() == CropParams()
    assert CellModelConfig(lr=1e-3).to_core().lr == 1e-3  # by keyword, not by position


def test_training_threads_come_from_ssc_train_threads(monkeypatch):
    from ssc_assets.defs.cell_assets import CellAutoencoderConfig, CellModelConfig
    from ssc_assets.defs.model_assets import TrainConfig

    monkeypatch.setenv("SSC_TRAIN_THREADS", "3")
    assert TrainConfig().to_core().threads == 3
    assert CellModelConfig().to_core().threads == 3
    assert CellAutoencoderConfig().to_core().threads == 3
    monkeypatch.delenv("SSC_TRAIN_THREADS")
    import os

    assert TrainConfig().to_core().threads == max(1, len(os.sched_getaffinity(0)) // 2)


def test_core_default_resolves_every_kind_of_reference():
    from ssc_assets.core.image.filters import PreprocessParams
    from ssc_assets.core.learn.embeddings import METHODS
    from ssc_assets.core.learn.fit import fit_pca_svm
    from ssc_assets.core.learn.loop import TrainParams

    assert core_default("ssc_assets.core.learn.loop:TrainParams.epochs") == TrainParams().epochs
    assert core_default("ssc_assets.core.image.filters:PreprocessParams.nuclei.outlier_radius") == PreprocessParams().nuclei.outlier_radius
    assert core_default("ssc_assets.core.learn.fit:fit_pca_svm.n_components") == \
        inspect.signature(fit_pca_svm).parameters["n_components"].default
    assert core_default("ssc_assets.core.learn.embeddings:METHODS") == METHODS
    with pytest.raises(KeyError):
        core_default("ssc_assets.core.learn.loop:TrainParams.no_such_field")
