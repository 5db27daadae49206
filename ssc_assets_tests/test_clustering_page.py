"""The clusterings page and report: compact comparison table, numeric headline metadata, trust
notes (chance, intervals, demo preset) and the HTML report read first by a scientist."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from ssc_assets.core.analysis import clustering as cl
from ssc_assets.core.analysis import comparison as cmp
from ssc_assets.core.analysis import report as rp
from ssc_assets.core.plots import report_figures as rf

PNG = b"\x89PNG"


def wells_frame(method: str, plates=("P1", "P2"), n_donors: int = 8, shift: float = 2.0, seed: int = 0) -> pd.DataFrame:
    """One well per donor and plate; SSc donors shifted by ``shift``; 4 sites per well."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_donors):
        ssc = d % 2 == 1
        centre = rng.normal(0, 1.0, 5) + (shift if ssc else 0.0)
        for p, plate in enumerate(plates):
            rows.append({"Metadata_Plate": plate, "Metadata_Well": f"{'BCDEFG'[p]}{d + 2:02d}", "Metadata_Donor": f"D{d}",
                         "Metadata_Condition": "SSc" if ssc else "HC",
                         "Metadata_Group": ("SSC" if d % 4 == 1 else "SSCHL") if ssc else "HC",
                         "Metadata_Method": method, "Metadata_n_sites": 4,
                         **{f"f{j}": v for j, v in enumerate(centre + rng.normal(0, 0.3, 5))}})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two methods; 'classifier' has wells on one plate only, so its donor-replicate mAP is NaN."""
    cache = tmp_path_factory.mktemp("copairs")
    wells = {"pca": wells_frame("pca", seed=1), "classifier": wells_frame("classifier", plates=("P1",), seed=2)}
    results = {m: cl.cluster_method(df, seed=0, null_size=100, cache_dir=cache) for m, df in wells.items()}
    return {"results": results, "wells": pd.concat(wells.values(), ignore_index=True)}


# ---------------------------------------------------------------- formatting


def test_fmt3_three_significant_digits_and_na():
    assert cmp.fmt3(0.123456) == "0.123"
    assert cmp.fmt3(0.00049975) == "0.0005"
    assert cmp.fmt3(12.3456) == "12.3"
    assert cmp.fmt3(103) == "103"
    assert cmp.fmt3(np.int64(7)) == "7"
    assert cmp.fmt3(float("nan")) == cmp.fmt3(None) == cmp.fmt3(float("inf")) == cmp.fmt3("nan") == "n/a"


# ---------------------------------------------------------------- the Dagster page


def test_markdown_table_one_column_per_method_no_nan(run):
    results = run["results"]
    assert math.isnan(results["classifier"]["map_donor_replicate"])  # the NaN this table must not show
    md = cmp.headline_markdown(results)
    lines = md.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["metric", "pca", "classifier"]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 3, line
        assert len(cells[0]) <= 24  # short labels: fits a ~1100 px dialog
        assert all(len(c) <= 16 for c in cells[1:]), line
    assert "nan" not in md.lower()
    t = cmp.headline_table(results).set_index("metric")
    assert t.at["mAP donor replicates", "classifier"] == "n/a"
    assert t.at["mAP SSc/HC p", "pca"] == cmp.fmt3(results["pca"]["map_condition_p"])
    assert t.at["acc. chance (majority)", "pca"] == "0.5"
    assert "±" in t.at["acc. donor-grouped ± sd", "pca"]
    assert t.at["thesis acc. (ungrouped)", "pca"] == "0.603"
    # every number has at most 3 significant digits
    for v in t.to_numpy().ravel():
        for num in re.findall(r"\d+\.\d+", str(v)):
            assert len(num.replace(".", "").lstrip("0")) <= 3, v


def test_headline_metadata_keys_exist_and_are_finite(run):
    meta = cmp.headline_metadata(run["results"])
    for m in ("pca", "classifier"):
        for k in ("v_measure", "svm_accuracy_donor_grouped", "svm_accuracy_donor_grouped_sd", "svm_chance",
                  "svm_accuracy_ungrouped", "map_condition", "map_condition_p", "n_wells"):
            assert f"{m}/{k}" in meta, f"{m}/{k}"
    assert "pca/map_donor_replicate" in meta and "pca/map_donor_replicate_p" in meta
    assert "classifier/map_donor_replicate" not in meta  # NaN: left out, never NaN
    assert len(meta) >= 10
    for k, v in meta.items():
        assert type(v) in (int, float) and math.isfinite(v), k
    assert meta["pca/svm_chance"] == 0.5


def test_chance_interval_and_preset():
    assert cl.chance_accuracy(["HC", "HC", "SSc"]) == pytest.approx(2 / 3)
    donors = np.repeat([f"D{i}" for i in range(10)], 2)
    lo, hi = cl.bootstrap_ci(np.ones(20), donors)
    assert lo == hi == 1.0
    lo, hi = cl.bootstrap_ci(np.r_[np.ones(10), np.zeros(10)], donors, seed=1)
    assert 0.1 < lo < 0.5 < hi < 0.9
    assert all(math.isnan(v) for v in cl.bootstrap_ci([1.0, 0.0], ["D1", "D1"]))

    assert cmp.preset_reasons({"ssc-pca": {"version": 1, "params": {}, "tags": {"ssc.preset": "demo"}}}) == [
        "ssc-pca v1: trained with the demo preset"]
    assert cmp.preset_reasons({"ssc-classifier": {"version": 3, "params": {"epochs": "4"}, "tags": {}}}) == [
        "ssc-classifier v3: 4 epochs (thesis: 30)"]
    assert cmp.preset_reasons({"ssc-classifier": {"version": 3, "params": {"epochs": "30"}, "tags": {}},
                              "ssc-pca": {"params": {"n_components": "64"}}}) == []


def test_trust_notes_say_chance_donors_and_demo(run):
    notes = cmp.trust_notes(run["results"], ["ssc-classifier v1: 4 epochs (thesis: 30)"])
    assert notes[0].startswith(cmp.DEMO_NOTE) and "4 epochs" in notes[0]
    text = " ".join(notes)
    assert "chance level" in text and "0.5" in text and "donors" in text and "permutations" in text
    assert not any(n.startswith(cmp.DEMO_NOTE) for n in cmp.trust_notes(run["results"], []))


# ---------------------------------------------------------------- the report


def qc_table(plate: str, n_sites: int = 10, failed: dict[int, str] | None = None) -> pd.DataFrame:
    """site_qc-like rows: 3 channels per site; ``failed``: site -> qc_reason."""
    failed = failed or {}
    rows = []
    for s in range(1, n_sites + 1):
        for ch in ("nuclei", "borders", "actin"):
            rows.append({"Metadata_Plate": plate, "Metadata_Well": "B02", "Metadata_Site": s, "channel": ch,
                         "passed_qc": s not in failed, "qc_reason": failed.get(s, ""), "qc_review": s == 1})
    return pd.DataFrame(rows)


def test_qc_summary_and_wells_per_condition(run):
    qc = {"P1": qc_table("P1", 10, {3: "nuclei: out of focus: score 0.1", 4: "actin: saturated: 2%; out of focus: x"}),
          "P2": None}
    t = rp.qc_summary(qc, run["wells"]).set_index("plate")
    assert t.at["P1", "sites imaged"] == 10 and t.at["P1", "failed QC"] == 2 and t.at["P1", "passed QC"] == 8
    assert t.at["P1", "failed by reason"] == "out of focus 2, saturated 1"
    assert t.at["P1", "review flags"] == 1
    assert "not readable" in t.at["P2", "failed by reason"]
    assert t.at["P2", "wells embedded"] == 8 and t.at["P2", "sites in wells"] == 32
    w = rp.wells_per_condition(run["wells"])
    assert set(w["condition"]) == {"HC", "SSc"}
    assert w["wells total"].sum() == 16 and {"wells P1", "wells P2", "donors"} <= set(w.columns)


def test_report_headline_first_with_p_values_and_no_note_rows(run):
    results = run["results"]
    html = rp.clustering_report_html(
        results, run["wells"], qc_by_plate={"P1": qc_table("P1", 6, {2: "nuclei: out of focus: x"}), "P2": None},
        examples=None, examples_note="no corrected_images store readable", preset=["ssc-classifier v1: 4 epochs (thesis: 30)"],
        comparison=pd.DataFrame({"metric": ["kmeans_v_measure"], "pca": [0.5], "classifier": [np.nan]}),
        guide=["V-measure: ..."])
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    order = [text.index(s) for s in ("Demo preset: not meaningful", "id='headline'>Headline", "id='data'>Data: plates",
                                     "id='guide'>How to read", "id='details'>Details", "Method: pca")]
    assert order == sorted(order)
    headline = text[text.index("id='headline'>"):text.index("id='data'>")]
    assert "mAP SSc/HC p" in headline and cmp.fmt3(results["pca"]["map_condition_p"]) in headline
    assert "acc. chance (majority)" in headline and "95% CI" in headline and "V-measure" in headline
    assert "<img" in headline  # the headline figure
    assert "_note" not in text  # no empty (or any) *_note rows; a real note is a sentence
    assert "map donor replicate: no pairs" in text or "map donor replicate:" in text  # classifier: one plate
    assert ">nan<" not in text.lower() and "n/a" in text
    assert "out of focus 1" in text and "no corrected_images store readable" in text


def test_report_figures_are_wide(run):
    import io

    from PIL import Image

    res = run["results"]["pca"]
    for name, png in {**res["report_figures"], "headline": rf.headline_png(run["results"])}.items():
        assert png.startswith(PNG)
        assert Image.open(io.BytesIO(png)).size[0] >= 900, name


def test_example_images_from_an_ome_zarr_store(tmp_path, run):
    from ssc_assets.core.io.ome_zarr_store import HcsPlateWriter

    store = tmp_path / "P1.ome.zarr"
    rng = np.random.default_rng(0)
    with HcsPlateWriter(store, "P1", ["nuclei", "borders", "actin"]) as w:
        for well in ("B02", "B03"):
            w.write_site(well, 1, rng.random((3, 96, 96)).astype(np.float32))
    img = rf.read_thumbnail(str(store), "B03", max_side=48)
    assert img.shape == (3, 48, 48) and img.dtype == np.float32
    picks = rf.pick_examples(run["wells"], per_condition=3)
    assert [p["condition"] for p in picks] == ["HC"] * 3 + ["SSc"] * 3
    assert len({p["donor"] for p in picks if p["condition"] == "SSc"}) == 3  # distinct donors first
    png = rf.examples_png([(img, "D0, P1 B03", "HC"), (img, "D1, P1 B02", "SSc")], ["nuclei", "borders", "actin"])
    assert png.startswith(PNG)


# ---------------------------------------------------------------- through Dagster


def test_clusterings_page_through_dagster(tmp_path):
    """The asset's metadata: numbers (finite), the compact table, the demo note, report links."""
    import dagster as dg
    import mlflow

    from ssc_assets.core.io.storage import write_parquet
    from ssc_assets.defs.clustering_assets import clusterings
    from ssc_assets.defs.io_managers import ManifestIOManager, ParquetIOManager
    from ssc_assets.defs.mlflow_tracking import MlflowTracking
    from ssc_assets.defs.partitions import plates
    from ssc_assets.defs.resources import Storage

    base = str(tmp_path / "storage")
    frames = [wells_frame("pca", seed=3), wells_frame("classifier", seed=4)]
    wells = pd.concat(frames, ignore_index=True)
    for plate, df in wells.groupby("Metadata_Plate"):
        write_parquet(df.reset_index(drop=True), f"{base}/well_embeddings/{plate}.parquet")
    write_parquet(qc_table("P1", 8, {5: "borders: out of focus: x"}), f"{base}/site_qc/P1.parquet")
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"),
                              ui_url="http://mlflow.test")
    client = tracking.client()
    with tracking.start_run(None, "ssc-classifier", "demo-fit", tags={"ssc.preset": "demo"}) as r:
        mlflow.log_params({"epochs": 4})
    client.create_registered_model("ssc-classifier")
    mv = client.create_model_version("ssc-classifier", f"runs:/{r.info.run_id}/model", run_id=r.info.run_id)
    client.set_registered_model_alias("ssc-classifier", "champion", mv.version)

    from ssc_assets.core.analysis.donor_scores import donor_report
    from ssc_assets.core.io.storage import write_text

    donors, summary = donor_report({m: df.reset_index(drop=True) for m, df in wells.groupby("Metadata_Method")},
                                   n_permutations=20, n_boot=100)
    write_text(f"{base}/donor_scores.json", json.dumps({"donors": donors.to_dict("records"),
                                                         "summary": summary.to_dict("records")}, default=str))
    source = dg.AssetSpec("well_embeddings", partitions_def=plates).with_io_manager_key("parquet_io_manager")
    donor_source = dg.AssetSpec("donor_scores").with_io_manager_key("manifest_io_manager")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(plates.name, ["P1", "P2"])
        res = dg.materialize(
            [clusterings, source, donor_source], instance=instance, selection=[clusterings],
            resources={"parquet_io_manager": ParquetIOManager(base_dir=base), "manifest_io_manager": ManifestIOManager(base_dir=base),
                       "storage": Storage(base_dir=base), "mlflow_tracking": tracking},
            run_config={"ops": {"clusterings": {"config": {"methods": ["pca", "classifier"], "null_size": 100}}}})
    assert res.success
    md = res.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
    numbers = {k: v.value for k, v in md.items() if "/" in k}
    assert len(numbers) >= 10
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers.values())
    for k in ("pca/v_measure", "pca/svm_accuracy_donor_grouped", "pca/svm_accuracy_donor_grouped_sd",
              "classifier/map_condition", "classifier/map_condition_p"):
        assert k in numbers, k
    page = md["comparison"].value
    assert page.startswith(f"**{cmp.DEMO_NOTE}**") and "ssc-classifier v1" in page
    assert "| metric | pca | classifier |" in page and "nan" not in page.lower()
    assert "demo preset: not meaningful" in md["demo_preset"].value
    url = md["report_mlflow"].value
    assert url.startswith("http://mlflow.test/#/experiments/") and "/artifactPath/report.html" in url
    run_id = url.split("/runs/")[1].split("/")[0]
    assert [a.path for a in client.list_artifacts(run_id) if a.path == "report.html"]
    report = open(md["report"].value).read()
    assert "Demo preset: not meaningful" in report and "out of focus 1" in report
    assert "_note" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", report)
    # the donor-level answer: ranked donors in the report, LODO accuracy and rho on the page
    assert "Donors ranked by SSc-likeness" in report and all(f">{d}<" in report for d in donors["Metadata_Donor"].unique())
    assert "acc. leave-one-donor-out" in page and {"pca/lodo_accuracy", "pca/rho_group"} <= set(numbers)
    assert numbers["pca/lodo_accuracy"] == pytest.approx(float(summary.set_index("Metadata_Method").at["pca", "lodo_accuracy"]))
