"""MLflow as a Dagster resource: one tracked run per model, tagged with its Dagster lineage.

Default store: SQLite tracking DB + artifact folder under ``$SSC_STORAGE_DIR/mlflow`` (MLflow 3
refuses the plain file store and puts artifacts relative to the working directory unless
told otherwise). ``MLFLOW_TRACKING_URI`` (e.g. ``http://mlflow:5000``) is used unchanged.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import dagster as dg
from pydantic import Field

from ssc_assets import settings

CHAMPION = "champion"


def _default_tracking_uri() -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + os.path.join(settings.storage_dir(), "mlflow", "mlflow.db")


def _default_artifact_root() -> str:
    return os.environ.get("SSC_MLFLOW_ARTIFACTS") or os.path.join(settings.storage_dir(), "mlflow", "artifacts")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Git SHA of the checkout (``+dirty`` when modified), or ``SSC_CODE_VERSION``, or ``unknown``."""
    if os.environ.get("SSC_CODE_VERSION"):
        return os.environ["SSC_CODE_VERSION"]
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class MlflowTracking(dg.ConfigurableResource):
    """Tracking store, artifact root and the UI address used for links in Dagster metadata."""

    tracking_uri: str = Field(default_factory=_default_tracking_uri, description="MLflow tracking URI (MLFLOW_TRACKING_URI).")
    artifact_root: str = Field(default_factory=_default_artifact_root, description="Artifact root for new experiments (local store only).")
    ui_url: str = Field(default_factory=lambda: os.environ.get("SSC_MLFLOW_UI", "http://127.0.0.1:5000"), description="MLflow UI, for links.")

    def client(self):
        from mlflow import MlflowClient

        self._prepare()
        return MlflowClient(tracking_uri=self.tracking_uri)

    def _prepare(self) -> None:
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def experiment_id(self, name: str) -> str:
        import mlflow

        self._prepare()
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if "://" not in self.artifact_root or self.artifact_root.startswith("file://"):
            root = self.artifact_root.removeprefix("file://")
            Path(root).mkdir(parents=True, exist_ok=True)
            location = Path(root, name).resolve().as_uri()
        elif self.tracking_uri.startswith("sqlite"):
            location = f"{self.artifact_root.rstrip('/')}/{name}"
        return mlflow.create_experiment(name, artifact_location=location)

    @contextlib.contextmanager
    def start_run(self, context: dg.AssetExecutionContext | dg.OpExecutionContext | None, experiment: str,
                  run_name: str, partitions: list[str] | None = None, tags: dict | None = None):
        """``mlflow.start_run`` in ``experiment``, tagged with the Dagster run id, asset key,
        code version and the plate partitions used. Yields the active ``mlflow.ActiveRun``."""
        import mlflow

        exp_id = self.experiment_id(experiment)
        all_tags = {"ssc.code_version": code_version(), "ssc.partitions": ",".join(partitions or [])}
        if context is not None:
            all_tags["dagster.run_id"] = context.run.run_id
            try:
                all_tags["dagster.asset_key"] = context.asset_key.to_user_string()
            except Exception:  # op context or multi-asset
                all_tags["dagster.op"] = context.op.name if hasattr(context, "op") else ""
        all_tags.update(tags or {})
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags) as run:
            yield run

    def run_link(self, run) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"

    def register(self, run_id: str, model_name: str, val_loss: float, model_uri: str | None = None) -> dict:
        """Register ``model_uri`` (default ``runs:/<run_id>/model``) as a new version of ``model_name``.

        The ``champion`` alias moves to the new version only when its validation loss is
        lower than the current champion's (or there is none). Returns version, alias state
        and the previous champion.
        """
        import mlflow

        self._prepare()
        client = self.client()
        mv = mlflow.register_model(model_uri or f"runs:/{run_id}/model", model_name,
                                   tags={"val_loss": f"{val_loss:.6g}", "run_id": run_id})
        current = current_champion(client, model_name)
        cur_loss = float(current.tags.get("val_loss", "inf")) if current is not None else float("inf")
        promoted = val_loss < cur_loss
        if promoted:
            client.set_registered_model_alias(model_name, CHAMPION, mv.version)
        return {"model": model_name, "version": int(mv.version), "champion": promoted,
                "previous_champion": int(current.version) if current is not None else None,
                "previous_champion_val_loss": None if current is None else cur_loss}

    def champion_uri(self, model_name: str) -> str:
        return f"models:/{model_name}@{CHAMPION}"

    def champion(self, model_name: str) -> dict:
        """The ``champion`` version of ``model_name``: version, run id and its run's params."""
        client = self.client()
        mv = client.get_model_version_by_alias(model_name, CHAMPION)
        run_id = mv.run_id or mv.tags.get("run_id")
        params = client.get_run(run_id).data.params if run_id else {}
        return {"model": model_name, "version": int(mv.version), "run_id": run_id, "params": params,
                "uri": self.champion_uri(model_name)}

    def load_champion(self, model_name: str, flavor: str = "pytorch"):
        """(model, :meth:`champion` info) loaded from ``models:/<name>@champion`` on the CPU."""
        info = self.champion(model_name)
        if flavor == "pytorch":
            import mlflow.pytorch
            import torch

            model = mlflow.pytorch.load_model(info["uri"], map_location=torch.device("cpu"))
            model.eval()
        else:
            import mlflow.sklearn

            model = mlflow.sklearn.load_model(info["uri"])
        return model, info


def no_champion_yet(exc: Exception) -> bool:
    """True only when the registry says the alias (or the model) does not exist; any other
    error (network, database, permissions) is not a reason to promote a new model."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    code = getattr(exc, "error_code", "")
    text = str(exc).lower()
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text)


def current_champion(client, model_name: str):
    """The ``champion`` model version, or None when there is none yet. A registry error is
    raised as a retryable ``dagster.Failure`` (the champion must never move on a failed read)."""
    import dagster as dg

    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except Exception as exc:  # noqa: BLE001 - classified below
        if no_champion_yet(exc):
            return None
        raise dg.Failure(description=f"cannot read the current champion of {model_name!r} from the model registry "
                                     f"({type(exc).__name__}: {exc}); champion not moved", allow_retries=True) from exc
