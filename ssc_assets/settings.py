"""Every environment variable of ssc-assets, in one registry (:data:`SETTINGS`), with accessors.

Each :class:`Setting` has the variable's name, the default the code uses when it is unset
(``None``: computed, e.g. the number of cores, or unset), the default as documented, and its
meaning. The Dagster layer (``ssc_assets/defs``), the CLI and the demo read environment
variables only through the accessor functions below. The pure core reads two of its own
(``SSC_IMAGE_THREADS`` in ``core/image/filters/threads.py``, ``SSC_EXIT_WITH_PARENT`` in
``core/parallel.py``); they are listed here so that the table is complete.

The README's settings table is :func:`markdown_table` verbatim (checked by
``ssc_assets_tests/test_settings_table.py``); print it with ``python -m ssc_assets.settings``.
Relative paths are resolved against the directory you run from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ssc_assets.core.ingest.channels import DEFAULT_CHANNEL_MAP, ChannelMap


@dataclass(frozen=True)
class Setting:
    """One environment variable."""

    name: str
    default: str | None  # what the code uses when the variable is unset (None: computed or unset)
    meaning: str
    documented_default: str | None = None  # the README's default column when not ``default`` itself

    @property
    def shown_default(self) -> str:
        return self.documented_default if self.documented_default is not None else f"`{self.default}`"


SETTINGS: tuple[Setting, ...] = (
    Setting("SSC_PLATES_DIR", "data/plates", "incoming plate folders, one sub-folder per plate; never modified"),
    Setting("SSC_STORAGE_DIR", "data/storage", "asset outputs; a local path or an fsspec URL"),
    Setting("SSC_CHANNEL_MAP", DEFAULT_CHANNEL_MAP,
            "MetaXpress wavelength -> channel (validated; the plate's own wavelengths decide which channels it has)"),
    Setting("SSC_TIME_POINT", "1", "time point used when a plate has several"),
    Setting("SSC_SETTLE_SECONDS", "60", "a plate's files must be unchanged this long before it is ingested"),
    Setting("SSC_COMPUTE_BACKEND", "process", "per-image work: local `process` pool, `serial`, or `dask`"),
    Setting("SSC_MAX_WORKERS", None, "size of the local process pool", "cores"),
    Setting("SSC_DASK_ADDRESS", None, "a Dask scheduler (`tcp://host:8786`); when set, per-image work runs there", "unset"),
    Setting("MLFLOW_TRACKING_URI", None, "MLflow tracking store/server for the model assets",
            "SQLite in `$SSC_STORAGE_DIR/mlflow/`"),
    Setting("SSC_MLFLOW_UI", "http://127.0.0.1:5000", "MLflow UI address used for links in Dagster metadata"),
    Setting("SSC_DAGSTER_UI", "http://127.0.0.1:3000",
            "Dagster UI address used for the run links in MLflow run and model descriptions"),
    Setting("SSC_DENSENET_WEIGHTS", "imagenet",
            "DenseNet-121 init: `imagenet` (torch hub cache or network), a local `.pth`, or `none`"),
    Setting("SSC_CLUSTER_CRON", "0 * * * *",
            "after each tick, `clusterings` re-runs if any plate's well embeddings changed"),
    Setting("SSC_RETRAIN_CRON", "0 2 * * *", "`nightly_retrain` schedule (UTC)"),
    Setting("SSC_TRAIN_PRESET", "thesis",
            "run config of `nightly_retrain`: `thesis` (Config defaults) or `demo` (`ssc_assets/demo_config.py`; "
            "use it on the demo instance)"),
    Setting("SSC_MLFLOW_ARTIFACTS", None, "artifact root of new MLflow experiments (local store)",
            "`$SSC_STORAGE_DIR/mlflow/artifacts`"),
    Setting("SSC_CODE_VERSION", None, "code version tagged on MLflow runs (set it where there is no git checkout)",
            "git SHA of the checkout"),
    Setting("SSC_TRAIN_THREADS", None,
            "torch threads of one training step (the local `training` pool runs 2 at once, see `dagster.yaml`; "
            "with a pool limit of 1, e.g. one GPU, set it to the cores)",
            "`max(1, cores // 2)`"),
    Setting("SSC_IMAGE_THREADS", None, "threads per process for the image filters (read by the core)", "`min(2, cores)`"),
    Setting("SSC_EXIT_WITH_PARENT", "1",
            "a step whose run worker was killed stops its per-site work (`0`: keep computing; read by the core)"),
    Setting("DAGSTER_HOME", None, "the Dagster instance (SQLite), configured by `dagster.yaml`",
            "`.dagster_home` (Makefile)"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def raw(name: str) -> str | None:
    """The variable's value, or its registered default when unset (``KeyError`` for a name
    that is not in :data:`SETTINGS`: every variable must be registered)."""
    return os.environ.get(name, BY_NAME[name].default)


def _set(name: str) -> str | None:
    """The variable's value when set and non-empty, else ``None``."""
    BY_NAME[name]  # noqa: B018 - registered names only
    return os.environ.get(name) or None


def markdown_table() -> str:
    """The settings table of the README."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{s.name}` | {s.shown_default} | {s.meaning} |" for s in SETTINGS]
    return "\n".join(lines)


# -- paths and plates ---------------------------------------------------------------------------


def _path(var: str) -> str:
    value = raw(var)
    return value if "://" in value else os.path.abspath(value)


def plates_dir() -> str:
    return _path("SSC_PLATES_DIR")


def storage_dir() -> str:
    return _path("SSC_STORAGE_DIR")


def channel_map() -> str:
    """``SSC_CHANNEL_MAP`` (validated: raises ``ValueError`` naming the variable and the bad part)."""
    value = raw("SSC_CHANNEL_MAP")
    try:
        ChannelMap.from_string(value)
    except ValueError as exc:
        raise ValueError(f"SSC_CHANNEL_MAP={value!r}: {exc}") from None
    return value


def channel_map_explicit() -> bool:
    """True when ``SSC_CHANNEL_MAP`` is set: the user chose the channel map."""
    return bool(os.environ.get("SSC_CHANNEL_MAP", "").strip())


def time_point() -> int:
    return int(raw("SSC_TIME_POINT"))


def settle_seconds() -> float:
    return float(raw("SSC_SETTLE_SECONDS"))


# -- compute ------------------------------------------------------------------------------------


def compute_backend() -> str:
    return "dask" if dask_address() else raw("SSC_COMPUTE_BACKEND")


def max_workers() -> int:
    return int(os.environ.get("SSC_MAX_WORKERS", str(os.cpu_count() or 1)))


def train_threads() -> int:
    """Torch threads per training step: ``SSC_TRAIN_THREADS``, else half the cores (two
    training steps share the machine; ``concurrency.pools`` in ``dagster.yaml``)."""
    value = _set("SSC_TRAIN_THREADS")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, int(value)) if value else max(1, cores // 2)


def dask_address() -> str | None:
    return _set("SSC_DASK_ADDRESS")


# -- MLflow and links ---------------------------------------------------------------------------


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite store under ``$SSC_STORAGE_DIR/mlflow``."""
    return _set("MLFLOW_TRACKING_URI") or "sqlite:///" + os.path.join(storage_dir(), "mlflow", "mlflow.db")


def mlflow_artifacts() -> str:
    return _set("SSC_MLFLOW_ARTIFACTS") or os.path.join(storage_dir(), "mlflow", "artifacts")


def code_version_override() -> str | None:
    """``SSC_CODE_VERSION`` when set (else the code version is the git SHA of the checkout)."""
    return _set("SSC_CODE_VERSION")


def mlflow_ui() -> str:
    return raw("SSC_MLFLOW_UI")


def dagster_ui() -> str:
    return raw("SSC_DAGSTER_UI")


def densenet_weights() -> str:
    return raw("SSC_DENSENET_WEIGHTS")


# -- automation ---------------------------------------------------------------------------------


def cluster_cron() -> str:
    return raw("SSC_CLUSTER_CRON")


def retrain_cron() -> str:
    return raw("SSC_RETRAIN_CRON")


def train_preset() -> str:
    return raw("SSC_TRAIN_PRESET")


def dagster_home() -> str | None:
    return os.environ.get("DAGSTER_HOME")


if __name__ == "__main__":
    print(markdown_table())
