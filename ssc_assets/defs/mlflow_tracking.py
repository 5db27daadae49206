"""MLflow as a Dagster resource: one tracked run per model, tagged with its Dagster lineage.

Default store: SQLite tracking DB + artifact folder under ``$SSC_STORAGE_DIR/mlflow`` (MLflow 3
refuses the plain file store and puts artifacts relative to the working directory unless
told otherwise). ``MLFLOW_TRACKING_URI`` (e.g. ``http://mlflow:5000``) is used unchanged.

What a user sees in the MLflow UI (all set here, for every experiment this project writes):

- experiments carry ``mlflow.experimentKind = custom_model_development`` (MLflow 3 UIs without the
  GenAI / Model training switch choose their classic runs table from it), a description and a saved runs-table view
  **Key metrics (ssc)** (experiment tag ``mlflow.sharedViewState.ssc-key-metrics``, the format
  the UI's own "Save view" writes) whose columns are the headline metrics;
- the MLflow 3.17 UI ignores that tag for its layout: it takes ``?workflowType=machine_learning``
  from the URL, else the browser's last choice of the GenAI / Model training switch (default
  GenAI). Every link made here (Dagster metadata, descriptions) carries the parameter, and the
  experiment links open the runs table in the key-metrics view;
- every run has a markdown description (``mlflow.note.content``) with a link to its Dagster
  run, the asset, the plates (partitions), the settings preset and the headline metrics;
- demo-preset runs (``ssc.preset = demo``) and the model versions they register start with a
  "DEMO PRESET: NOT MEANINGFUL" warning and their run names with ``[demo]``.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import dagster as dg
from pydantic import Field

from ssc_assets import settings
from ssc_assets.defs.model_families import CLUSTERING_EXPERIMENT, FAMILIES

CHAMPION = "champion"

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # classic runs table (not "genai_development": traces views)
NOTE_TAG = "mlflow.note.content"  # run / experiment description, rendered as markdown by the UI
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"  # default metric of the UI's chart view
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."  # runs-table views of the UI's "Views" menu
KEY_VIEW_ID = "ssc-key-metrics"
# The MLflow 3.17 UI picks its GenAI or model-training layout from this URL parameter, else from the
# browser's last choice (localStorage ``mlflow.workflowType``, default GenAI); it no longer reads
# ``mlflow.experimentKind`` for that. Every link made here carries the parameter.
ML_LAYOUT = "workflowType=machine_learning"
KEY_VIEW_NAME = "Key metrics (ssc)"
PRESET_TAG = "ssc.preset"
PRESET_DETAIL_TAG = "ssc.preset_detail"
DEMO = "demo"
DEMO_WARNING = ("> ⚠️ **DEMO PRESET: NOT MEANINGFUL.** Trained or computed with the small demo settings "
                "(`ssc_assets/demo_config.py`: a few epochs, small inputs). The numbers only show that the "
                "pipeline runs; do not use this for analysis.")


@dataclass(frozen=True)
class ExperimentSpec:
    """What an experiment holds and which columns its **Key metrics (ssc)** view shows."""

    about: str
    metrics: tuple[str, ...]
    params: tuple[str, ...] = ()
    tags: tuple[str, ...] = (PRESET_TAG, "ssc.partitions")
    primary_metric: str | None = None


_CLASSIFIER_METRICS = ("best_val_loss", "final_test_accuracy", "final_test_f1", "final_test_loss", "best_epoch")
_TRAIN_PARAMS = ("epochs", "augmentation_factor", "lr", "split_by")

EXPERIMENTS: dict[str, ExperimentSpec] = {
    FAMILIES["classifier"].experiment: ExperimentSpec(
        "Custom CNN SSc-vs-HC classifier (asset `classifier_model`, E = 8 embedding) and its augmentation sweeps "
        "(asset `augmentation_sweep`, tag `ssc.sweep`).",
        _CLASSIFIER_METRICS, (*_TRAIN_PARAMS, "crop_size"), (PRESET_TAG, "ssc.partitions", "ssc.sweep"), "best_val_loss"),
    FAMILIES["densenet"].experiment: ExperimentSpec(
        "DenseNet-121 SSc-vs-HC classifier (asset `densenet_model`, E = 8 embedding) and its augmentation sweeps.",
        _CLASSIFIER_METRICS, (*_TRAIN_PARAMS, "crop_size", "weights_source"),
        (PRESET_TAG, "ssc.partitions", "ssc.sweep", "ssc.weights_source"), "best_val_loss"),
    FAMILIES["autoencoder"].experiment: ExperimentSpec(
        "Per-channel autoencoders (asset `autoencoder_models`, 256-d bottleneck per channel), one run per channel.",
        ("best_val_loss", "final_test_loss", "best_epoch"), (*_TRAIN_PARAMS, "patch_size"),
        ("ssc.channel", PRESET_TAG, "ssc.partitions"), "best_val_loss"),
    FAMILIES["unet"].experiment: ExperimentSpec(
        "U-Net actin segmentation (asset `segmentation_model`), metric: IoU of the actin class.",
        ("best_val_loss", "final_test_iou_actin", "final_test_loss", "best_epoch"), (*_TRAIN_PARAMS, "tile_size"),
        primary_metric="best_val_loss"),
    FAMILIES["cells"].experiment: ExperimentSpec(
        "Single-cell CNN on nucleus-centred crops (asset `cell_classifier_model`, the CPU regime): out-of-fold "
        "well scores (donor-grouped folds, `fold<k>_*` curves) and the final model.",
        ("best_val_loss", "final_oof_well_auc", "final_oof_well_accuracy", "final_oof_donor_accuracy",
         "best_epoch"), ("crop_size", "downsample", "n_crops", "oof_folds_used"), primary_metric="best_val_loss"),
    FAMILIES["cell_autoencoder"].experiment: ExperimentSpec(
        "Autoencoder of nucleus-centred cell crops (asset `cell_autoencoder_model`, the CPU regime, no labels): "
        "reconstruction loss of held-out donors' crops per epoch.",
        ("best_val_loss", "best_epoch"), ("crop_size", "downsample", "n_crops", "embedding_size"),
        primary_metric="best_val_loss"),
    FAMILIES["pca"].experiment: ExperimentSpec(
        "PCA baseline embedding + SVM (asset `pca_model`), SVM accuracy with donor-grouped and ungrouped folds.",
        ("final_cv_grouped_accuracy", "final_cv_ungrouped_accuracy", "final_cv_grouped_f1", "final_pca_explained_variance"),
        ("n_components", "size", "split_by"), primary_metric="final_cv_grouped_accuracy"),
    CLUSTERING_EXPERIMENT: ExperimentSpec(
        "Patient clusterings per embedding method (asset `clusterings`): one run per method plus a `comparison` run.",
        ("kmeans_homogeneity", "hier_homogeneity", "svm_accuracy_donor_grouped", "svm_accuracy_ungrouped",
         "map_donor_replicate", "map_condition"),
        ("method", "n_wells", "null_size"), ("ssc.method", PRESET_TAG, "ssc.partitions"), "kmeans_homogeneity"),
}


def key_view_state(spec: ExperimentSpec) -> dict:
    """The runs-table UI state of the saved view: headline params, metrics and tags as columns.

    Column ids are the UI's canonical keys (``metrics.`name```); keys the UI does not know are
    ignored by it, so a view listing a metric that a run lacks is harmless.
    """
    cols = ["attributes.`Models`"]
    cols += [f"params.`{k}`" for k in spec.params]
    cols += [f"metrics.`{k}`" for k in spec.metrics]
    cols += [f"tags.`{k}`" for k in spec.tags]
    return {"selectedColumns": cols}


def saved_view_tag(name: str, state: dict, created_ms: int | None = None) -> str:
    """The value of a ``mlflow.sharedViewState.<id>`` experiment tag, as the MLflow 3 UI writes it."""
    now = int(time.time() * 1000)
    return json.dumps({"name": name, "createdAt": created_ms or now, "updatedAt": now,
                       "state": json.dumps(state, sort_keys=True)})


def _view_state_of(tag_value: str | None) -> dict | None:
    try:
        return json.loads(json.loads(tag_value)["state"])
    except (TypeError, ValueError, KeyError):
        return None


@dataclass
class ModelCard:
    """What a registered version is: shown in the version's and the model's descriptions."""

    about: str  # what the model predicts / embeds
    lines: list[str] = field(default_factory=list)  # markdown bullet contents (plates, preset, metrics...)
    preset: str | None = None
    preset_detail: str | None = None
    partitions: list[str] = field(default_factory=list)
    dagster_run_id: str | None = None
    score: str = ""  # e.g. "validation loss 0.6931"


@lru_cache(maxsize=1)
def code_version() -> str:
    """Git SHA of the checkout (``+dirty`` when modified), or ``SSC_CODE_VERSION``, or ``unknown``."""
    if settings.code_version_override():
        return settings.code_version_override()
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: What a logged model of each flavor needs to load (besides ``ssc_assets`` itself, whose classes
#: the pickles reference), pinned to this environment by :func:`model_requirements`.
MODEL_PACKAGES = {"pytorch": ("torch", "torchvision", "numpy", "pandas", "cloudpickle"),
                  "sklearn": ("scikit-learn", "scipy", "numpy", "pandas", "cloudpickle")}


@lru_cache(maxsize=None)
def model_requirements(flavor: str) -> tuple[str, ...]:
    """``pip_requirements`` for ``mlflow.<flavor>.log_model``: mlflow and :data:`MODEL_PACKAGES`
    pinned to the installed versions (packages not installed are left out). Given explicitly,
    MLflow does not infer them: its inference re-imports the model in a subprocess (5-10 s per
    logged model on 2 cores) and lists whatever that process imported (pytest, dask, rich, ...)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("mlflow", *MODEL_PACKAGES[flavor]):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return tuple(out)


class MlflowTracking(dg.ConfigurableResource):
    """Tracking store, artifact root and the UI addresses used for links (MLflow and Dagster)."""

    tracking_uri: str = Field(default_factory=settings.mlflow_tracking_uri, description="MLflow tracking URI (MLFLOW_TRACKING_URI).")
    artifact_root: str = Field(default_factory=settings.mlflow_artifacts,
                               description="Artifact root for new experiments (local store only; SSC_MLFLOW_ARTIFACTS).")
    ui_url: str = Field(default_factory=settings.mlflow_ui, description="MLflow UI (SSC_MLFLOW_UI), for links.")
    dagster_ui_url: str = Field(default_factory=settings.dagster_ui,
                                description="Dagster UI (SSC_DAGSTER_UI), for the links in MLflow run and model descriptions.")

    def client(self):
        from mlflow import MlflowClient

        self._prepare()
        return MlflowClient(tracking_uri=self.tracking_uri)

    def _prepare(self) -> None:
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            _init_sqlite_store_once(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    # -- links -------------------------------------------------------------------------------------

    def dagster_run_url(self, run_id: str) -> str:
        return f"{self.dagster_ui_url.rstrip('/')}/runs/{run_id}"

    def dagster_asset_url(self, asset_key: str) -> str:
        return f"{self.dagster_ui_url.rstrip('/')}/assets/{asset_key}"

    def experiment_link(self, experiment_id: str, name: str | None = None) -> str:
        """The experiment's runs table, in the **Key metrics (ssc)** view when it has one."""
        url = f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{ML_LAYOUT}"
        return url + (f"&viewStateShareKey={KEY_VIEW_ID}" if name is None or name in EXPERIMENTS else "")

    def run_link(self, run) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?{ML_LAYOUT}"

    def model_version_link(self, model_name: str, version: int | str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/models/{model_name}/versions/{version}?{ML_LAYOUT}"

    # -- experiments -------------------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created if missing; its UI tags (kind, description, saved
        view, primary metric) are set on creation and brought up to date on existing experiments."""
        import mlflow
        from mlflow.exceptions import MlflowException

        self._prepare()
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            location = None
            if "://" not in self.artifact_root or self.artifact_root.startswith("file://"):
                root = self.artifact_root.removeprefix("file://")
                Path(root).mkdir(parents=True, exist_ok=True)
                location = Path(root, name).resolve().as_uri()
            elif self.tracking_uri.startswith("sqlite"):
                location = f"{self.artifact_root.rstrip('/')}/{name}"
            try:
                exp_id = mlflow.create_experiment(name, artifact_location=location,
                                                  tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException as exc:  # created concurrently by another run
                exp = mlflow.get_experiment_by_name(name)
                if exp is None:
                    raise exc
            else:
                exp = mlflow.get_experiment(exp_id)
        self.ensure_experiment_tags(exp)
        return exp.experiment_id

    def ensure_experiment_tags(self, exp) -> None:
        """Set what is missing or outdated: the experiment kind (always ``custom_model_development``),
        the description (only when there is none: a user's edit is kept), the saved view and the
        primary metric of the project's experiments (``EXPERIMENTS``)."""
        tags = dict(exp.tags or {})
        want: dict[str, str] = {}
        if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            want[EXPERIMENT_KIND_TAG] = EXPERIMENT_KIND
        spec = EXPERIMENTS.get(exp.name)
        if not tags.get(NOTE_TAG):
            want[NOTE_TAG] = self._experiment_note(exp, spec)
        if spec is not None:
            view_key = SAVED_VIEW_PREFIX + KEY_VIEW_ID
            state = key_view_state(spec)
            if _view_state_of(tags.get(view_key)) != state:
                try:
                    created = json.loads(tags[view_key])["createdAt"]
                except (KeyError, TypeError, ValueError):
                    created = None
                want[view_key] = saved_view_tag(KEY_VIEW_NAME, state, created)
            if spec.primary_metric and not tags.get(PRIMARY_METRIC_TAG):
                want[PRIMARY_METRIC_TAG] = spec.primary_metric
        if want:
            client = self.client()
            for k, v in want.items():
                client.set_experiment_tag(exp.experiment_id, k, v)

    def _experiment_note(self, exp, spec: ExperimentSpec | None) -> str:
        lines = [spec.about if spec else f"Runs written by the ssc-assets Dagster pipeline ({exp.name})."]
        lines.append("Every run links to the Dagster run that made it (run description) and is tagged "
                     "`dagster.run_id`, `dagster.asset_key`, `ssc.partitions` (plates), `ssc.preset` and `ssc.code_version`. "
                     "Runs tagged `ssc.preset = demo` used the small demo settings: their numbers are not meaningful.")
        if spec is not None:
            lines.append(f"Headline columns: choose the view **{KEY_VIEW_NAME}** in the *Views* menu of the runs table, "
                         f"or open [this link]({self.experiment_link(exp.experiment_id, exp.name)}).")
        return "\n\n".join(lines)

    # -- runs --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def start_run(self, context: dg.AssetExecutionContext | dg.OpExecutionContext | None, experiment: str,
                  run_name: str, partitions: list[str] | None = None, tags: dict | None = None,
                  preset: str | None = None, preset_detail: str | None = None):
        """``mlflow.start_run`` in ``experiment``, tagged with the Dagster run id, asset key,
        code version, the plate partitions used and the settings preset, with a markdown
        description linking the Dagster run. Yields the active ``mlflow.ActiveRun``.

        ``preset`` (``demo``, ``thesis``, ``custom``): when not given, a Dagster run tagged
        ``ssc/source`` = ``... demo`` (``ssc-assets demo``) counts as ``demo``. Demo runs get a
        ``[demo]`` run-name prefix and a warning at the top of their description."""
        import mlflow

        exp_id = self.experiment_id(experiment)
        all_tags = {"ssc.code_version": code_version(), "ssc.partitions": ",".join(partitions or [])}
        if context is not None:
            all_tags["dagster.run_id"] = context.run.run_id
            try:
                all_tags["dagster.asset_key"] = context.asset_key.to_user_string()
            except Exception:  # op context or multi-asset
                all_tags["dagster.op"] = context.op.name if hasattr(context, "op") else ""
            if preset is None and "demo" in str((context.run.tags or {}).get("ssc/source", "")):
                preset, preset_detail = DEMO, preset_detail or "Dagster run launched by `ssc-assets demo`"
        if preset:
            all_tags[PRESET_TAG] = preset
        if preset_detail:
            all_tags[PRESET_DETAIL_TAG] = preset_detail[:500]
        all_tags.update(tags or {})
        if all_tags.get(PRESET_TAG) == DEMO and not run_name.startswith("[demo]"):
            run_name = f"[demo] {run_name}"
        all_tags[NOTE_TAG] = self.run_description(all_tags)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags) as run:
            yield run

    def run_description(self, tags: dict, headline: dict[str, float] | None = None, lines: list[str] | None = None) -> str:
        """Markdown description of a run from its tags: demo warning, Dagster run and asset links,
        plates, preset, code version, then ``headline`` metrics and extra ``lines``."""
        out = [DEMO_WARNING, ""] if tags.get(PRESET_TAG) == DEMO else []
        run_id = tags.get("dagster.run_id")
        what = tags.get("dagster.asset_key")
        head = []
        if what:
            head.append(f"Asset [`{what}`]({self.dagster_asset_url(what)})")
        elif tags.get("dagster.op"):
            head.append(f"Op `{tags['dagster.op']}`")
        if run_id:
            head.append(f"Dagster run [`{run_id[:8]}`]({self.dagster_run_url(run_id)})")
        out.append(" · ".join(head) if head else "Not run by Dagster.")
        out.append("")
        plates = [p for p in str(tags.get("ssc.partitions", "")).split(",") if p]
        out.append(f"- Plates (partitions, {len(plates)}): " + (_plates_md(plates) if plates else "none recorded"))
        if tags.get(PRESET_TAG):
            detail = tags.get(PRESET_DETAIL_TAG)
            out.append(f"- Settings preset: **{tags[PRESET_TAG]}**" + (f" ({detail})" if detail else ""))
        if tags.get("ssc.code_version"):
            out.append(f"- Code version: `{tags['ssc.code_version']}`")
        if headline:
            shown = ", ".join(f"`{k}` {_fmt(v)}" for k, v in headline.items() if v is not None)
            if shown:
                out.append(f"- Headline: {shown}")
        out += [f"- {line}" for line in (lines or [])]
        return "\n".join(out)[:7900]

    def describe_run(self, run_id: str, headline: dict[str, float] | None = None, lines: list[str] | None = None) -> str:
        """Rewrite the run's description (``mlflow.note.content``) with headline metrics and extra lines."""
        client = self.client()
        tags = client.get_run(run_id).data.tags
        text = self.run_description(tags, headline, lines)
        client.set_tag(run_id, NOTE_TAG, text)
        return text

    # -- registry ----------------------------------------------------------------------------------

    def register(self, run_id: str, model_name: str, val_loss: float, model_uri: str | None = None,
                 card: ModelCard | None = None) -> dict:
        """Register ``model_uri`` (default ``runs:/<run_id>/model``) as a new version of ``model_name``.

        The ``champion`` alias moves to the new version only when its validation loss is
        lower than the current champion's (or there is none). With a ``card``, the version and
        the registered model get descriptions (what the model is, plates, preset, score, Dagster
        run link; the model's names its champion) and the version the tags ``ssc.preset``,
        ``ssc.partitions`` and ``dagster.run_id``. Returns version, alias state and the previous champion.
        """
        import mlflow

        self._prepare()
        client = self.client()
        vtags = {"val_loss": f"{val_loss:.6g}", "run_id": run_id}
        if card is not None:
            vtags.update({k: v for k, v in {PRESET_TAG: card.preset, "ssc.partitions": ",".join(card.partitions),
                                            "dagster.run_id": card.dagster_run_id, "ssc.score": card.score}.items() if v})
        mv = mlflow.register_model(model_uri or f"runs:/{run_id}/model", model_name, tags=vtags)
        current = current_champion(client, model_name)
        cur_loss = float(current.tags.get("val_loss", "inf")) if current is not None else float("inf")
        promoted = val_loss < cur_loss
        out = {"model": model_name, "version": int(mv.version), "champion": promoted,
               "previous_champion": int(current.version) if current is not None else None,
               "previous_champion_val_loss": None if current is None else cur_loss}
        if card is not None:
            prev_tags = dict(current.tags or {}) if current is not None else {}
            client.update_model_version(model_name, mv.version, description=self.version_description(card, out, prev_tags))
            champ_tags = vtags if promoted or current is None else prev_tags
            champ_version = mv.version if promoted or current is None else current.version
            client.update_registered_model(model_name, description=self.model_description(
                model_name, card.about, (champ_version, champ_tags), (mv.version, vtags)))
        if promoted:
            client.set_registered_model_alias(model_name, CHAMPION, mv.version)
        return out

    def version_description(self, card: ModelCard, reg: dict, prev_tags: dict | None = None) -> str:
        out = [DEMO_WARNING, ""] if card.preset == DEMO else []
        out.append(card.about)
        out.append("")
        if card.dagster_run_id:
            out.append(f"- Dagster run: [`{card.dagster_run_id[:8]}`]({self.dagster_run_url(card.dagster_run_id)})")
        out.append(f"- Plates (partitions, {len(card.partitions)}): " + _plates_md(card.partitions))
        if card.preset:
            out.append(f"- Settings preset: **{card.preset}**" + (f" ({card.preset_detail})" if card.preset_detail else ""))
        if card.score:
            out.append(f"- Selection score: {card.score}")
        out += [f"- {line}" for line in card.lines]
        prev_score = (prev_tags or {}).get("ssc.score") or f"val_loss {_fmt(reg['previous_champion_val_loss'])}"
        if reg["champion"]:
            prev = "" if reg["previous_champion"] is None else f" (previous champion v{reg['previous_champion']}: {prev_score})"
            out.append(f"- At registration: became `@{CHAMPION}`{prev}")
        else:
            out.append(f"- At registration: not promoted; `@{CHAMPION}` stayed v{reg['previous_champion']} ({prev_score})")
        return "\n".join(out)[:4900]

    def model_description(self, model_name: str, about: str, champion: tuple, latest: tuple) -> str:
        """Registered-model description: what it is, its champion (with a demo warning on top
        when the champion is a demo-preset version) and the latest version if different."""
        (cv, ctags), (lv, ltags) = champion, latest
        out = [DEMO_WARNING.replace("Trained or computed", f"The `@{CHAMPION}` version (v{cv}) was trained"), ""] \
            if ctags.get(PRESET_TAG) == DEMO else []
        out += [about, "", f"Downstream assets load `models:/{model_name}@{CHAMPION}`; the alias moves to a new version "
                           "only when it scores better (lower validation loss; PCA: higher donor-grouped SVM accuracy).", ""]
        out.append(f"- `@{CHAMPION}`: [v{cv}]({self.model_version_link(model_name, cv)}) ({self._version_summary(ctags)})")
        if str(lv) != str(cv):
            warn = " ⚠️ demo preset" if ltags.get(PRESET_TAG) == DEMO else ""
            out.append(f"- latest: [v{lv}]({self.model_version_link(model_name, lv)}){warn} ({self._version_summary(ltags)})")
        return "\n".join(out)[:4900]

    def _version_summary(self, tags: dict) -> str:
        bits = [tags.get("ssc.score") or f"val_loss {tags.get('val_loss', '?')}"]
        if tags.get(PRESET_TAG):
            bits.append(f"preset {tags[PRESET_TAG]}")
        plates = [p for p in str(tags.get("ssc.partitions", "")).split(",") if p]
        if plates:
            bits.append(f"{len(plates)} plate{'s' if len(plates) != 1 else ''}: " + ", ".join(plates[:6]) + (" …" if len(plates) > 6 else ""))
        if tags.get("dagster.run_id"):
            bits.append(f"[Dagster run]({self.dagster_run_url(tags['dagster.run_id'])})")
        return "; ".join(bits)

    def champion_uri(self, model_name: str) -> str:
        return f"models:/{model_name}@{CHAMPION}"

    def champion(self, model_name: str) -> dict:
        """The ``champion`` version of ``model_name``: version, run id, its run's params and its preset."""
        client = self.client()
        mv = client.get_model_version_by_alias(model_name, CHAMPION)
        run_id = mv.run_id or mv.tags.get("run_id")
        run = client.get_run(run_id) if run_id else None
        params, run_tags = (run.data.params, run.data.tags) if run else ({}, {})
        return {"model": model_name, "version": int(mv.version), "run_id": run_id, "params": params,
                "uri": self.champion_uri(model_name), "preset": (mv.tags or {}).get(PRESET_TAG) or run_tags.get(PRESET_TAG)}

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


def champion_runs(mlflow_tracking: MlflowTracking, methods, context) -> dict[str, dict]:
    """Champion version, params and tags of the models behind ``methods`` (unknown ones left out)."""
    from ssc_assets.core.analysis.comparison import METHOD_MODELS

    out = {}
    try:
        client = mlflow_tracking.client()
    except Exception as exc:  # noqa: BLE001 - the report is still useful without it
        context.log.warning(f"MLflow registry not readable ({type(exc).__name__}: {exc}): demo preset not checked")
        return out
    for m in methods:
        for name in METHOD_MODELS.get(m, ()):
            try:
                mv = client.get_model_version_by_alias(name, CHAMPION)
                run = client.get_run(mv.run_id or mv.tags.get("run_id"))
                out[name] = {"version": int(mv.version), "params": dict(run.data.params),
                             "tags": {**dict(run.data.tags), **dict(mv.tags or {})}}
            except Exception as exc:  # noqa: BLE001 - no champion (e.g. tests) or registry hiccup: not fatal
                context.log.debug(f"champion of {name} not read: {type(exc).__name__}: {exc}")
    return out


def _plates_md(plates: list[str], limit: int = 40) -> str:
    shown = ", ".join(f"`{p}`" for p in plates[:limit])
    return shown + (f" and {len(plates) - limit} more (tag `ssc.partitions`)" if len(plates) > limit else "")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


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


_INITIALISED: set[str] = set()


def _init_sqlite_store_once(uri: str) -> None:
    """Create / migrate a SQLite MLflow store under an exclusive file lock, once per process.

    Steps of one run start in parallel processes; without the lock two of them may run
    MLflow's schema migration at once on a new store and one fails with ``duplicate column
    name``."""
    if uri in _INITIALISED:
        return
    import fcntl

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            SqlAlchemyStore(uri, str(db.parent / "artifacts"))  # creates or upgrades the schema
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _INITIALISED.add(uri)
