"""The Dagster UI in a real browser: start dagster-webserver on a temporary instance with a tiny
simulated plate, materialize the plate's partition by clicking, wait for success, and check
that the QC histograms appear in the asset's metadata. Screenshot: test-artifacts/.

Needs Debian's Chromium (`/usr/bin/chromium`, installed by `.ci/run`) and Playwright for
Python (test extra; no browser download: `executable_path`). Skips with the reason otherwise.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from ssc_assets.core.simulate import simulate_demo
from ssc_assets.defs.partitions import plates

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SSC_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("ui")
    home, plates_dir = root / "dagster_home", root / "plates"
    home.mkdir()
    # runs launch at once (no queue, so no daemon needed)
    (home / "dagster.yaml").write_text("run_coordinator:\n  module: dagster._core.run_coordinator\n"
                                       "  class: DefaultRunCoordinator\ntelemetry:\n  enabled: false\n")
    simulate_demo(plates_dir, root / "truth", n_plates=1, seed=4, image_size=128, n_wells=4)
    key = next(p for p in plates_dir.iterdir() if p.is_dir()).name
    with dg.DagsterInstance.from_config(str(home)) as instance:
        _seed_clusterings(instance, root / "storage")
        instance.add_dynamic_partitions(plates.name, [key])  # what plate_sensor does
    env = dict(os.environ, DAGSTER_HOME=str(home), SSC_PLATES_DIR=str(plates_dir), SSC_STORAGE_DIR=str(root / "storage"),
               SSC_COMPUTE_BACKEND="serial", SSC_SETTLE_SECONDS="0")
    port = _free_port()
    log = open(root / "webserver.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                             "-m", "ssc_assets.definitions"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=REPO, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                ws = _graphql(port, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus "
                                    "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
                entries = ws["data"]["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["loadStatus"] == "LOADED":
                    err = entries[0]["locationOrLoadError"]
                    assert err["__typename"] != "PythonError", err.get("message")
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, (root / "webserver.log").read_text()[-3000:]
            time.sleep(1)
        yield {"port": port, "home": home, "key": key, "root": root}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _seed_clusterings(instance, storage: Path) -> None:
    """``clusterings`` materialized in-process from well embeddings of two small synthetic
    plates (the page a user opens after ``make demo``, without training models here)."""
    import pandas as pd

    from ssc_assets.core.analysis.donor_scores import donor_report
    from ssc_assets.core.io.storage import write_parquet, write_text
    from ssc_assets.defs.clustering_assets import clusterings
    from ssc_assets.defs.io_managers import ManifestIOManager, ParquetIOManager
    from ssc_assets.defs.mlflow_tracking import MlflowTracking
    from ssc_assets.defs.resources import Storage
    from ssc_assets_tests.test_clustering_page import wells_frame

    base = str(storage)
    wells = pd.concat([wells_frame("pca", plates=("UI-P1", "UI-P2"), seed=3),
                       wells_frame("cells", plates=("UI-P1", "UI-P2"), seed=4)], ignore_index=True)
    for plate, df in wells.groupby("Metadata_Plate"):
        write_parquet(df.reset_index(drop=True), f"{base}/well_embeddings/{plate}.parquet")
    donors, summary = donor_report({m: df.reset_index(drop=True) for m, df in wells.groupby("Metadata_Method")},
                                   n_permutations=20, n_boot=100)
    write_text(f"{base}/donor_scores.json", json.dumps({"donors": donors.to_dict("records"),
                                                         "summary": summary.to_dict("records")}, default=str))
    instance.add_dynamic_partitions(plates.name, ["UI-P1", "UI-P2"])
    res = dg.materialize(
        [clusterings, dg.AssetSpec("well_embeddings", partitions_def=plates).with_io_manager_key("parquet_io_manager"),
         dg.AssetSpec("donor_scores").with_io_manager_key("manifest_io_manager")],
        instance=instance, selection=[clusterings],
        resources={"parquet_io_manager": ParquetIOManager(base_dir=base), "manifest_io_manager": ManifestIOManager(base_dir=base),
                   "storage": Storage(base_dir=base),
                   "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{storage.parent}/mlflow.db",
                                                     artifact_root=str(storage.parent / "artifacts"))},
        run_config={"ops": {"clusterings": {"config": {"methods": ["pca", "cells"], "null_size": 100}}}})
    assert res.success
    for plate in ("UI-P1", "UI-P2"):  # no plate folders behind them: the UI's "All" must select just the real plate
        instance.delete_dynamic_partition(plates.name, plate)


def _wait_materialized(home: Path, asset: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while time.time() < deadline:
            if instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None:
                return
            failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
            assert not failed, f"run {failed[0].run_id} failed"
            queued = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
            assert not queued or time.time() < deadline - timeout + 60, "run stuck in the queue"
            time.sleep(1)
    raise AssertionError(f"{asset} was not materialized within {timeout} s")


def _dismiss_welcome(page) -> None:
    """Close the first-visit community dialog, which can appear a moment after the page loads."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=4000)
    except Exception:  # noqa: BLE001 - not shown (already dismissed)
        return
    skip.click()
    skip.wait_for(state="hidden")


def test_materialize_plate_partition_in_the_browser(webserver):
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{webserver['port']}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            for asset in ("raw_sites", "site_qc"):  # site_qc needs its upstream partition first
                page.goto(f"{base}/assets/{asset}", wait_until="networkidle")
                _dismiss_welcome(page)
                page.get_by_role("button", name="Materialize").first.click()
                page.get_by_role("button", name="All", exact=True).click()  # the plate partitions: just ours
                page.get_by_role("button", name="Launch 1 run").click()
                _wait_materialized(webserver["home"], asset)
            page.goto(f"{base}/assets/site_qc", wait_until="networkidle")
            page.get_by_text("qc_histograms").first.wait_for()
            assert page.get_by_text(webserver["key"]).count() >= 1  # the materialized partition is shown
            page.screenshot(path=str(ARTIFACTS / "ui-site_qc-materialized.png"), full_page=True)
            # open the histograms (markdown with an embedded PNG)
            page.get_by_role("row").filter(has_text="qc_histograms").get_by_text("Show Markdown").click()
            img = page.locator('img[src^="data:image/png"]').first
            img.wait_for(state="visible")
            assert img.bounding_box()["width"] > 100
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "ui-site_qc-histograms.png"))
            page.keyboard.press("Escape")
            _check_failed_sites_table(page, webserver)
            _check_clusterings_page(page, base)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "ui-failure.png"), full_page=True)  # for the CI log reader
            raise
        browser.close()


def _check_failed_sites_table(page, webserver) -> None:
    """Every failed site's row shows every part of its reason (a '|' in a reason once split the
    markdown table and dropped the borders and actin reasons)."""
    import pandas as pd

    from ssc_assets.core.ingest.qc import CHANNEL_SEP

    qc = pd.read_parquet(webserver["root"] / "storage" / "site_qc" / f"{webserver['key']}.parquet")
    failed = qc.drop_duplicates(["Metadata_Well", "Metadata_Site"]).query("not passed_qc")
    assert len(failed), "the simulated plate plants failed sites"
    page.get_by_role("row").filter(has_text="failed_sites").get_by_text("Show Markdown").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("table").first.wait_for()
    rows = dialog.locator("table tr")
    texts = [rows.nth(i).inner_text() for i in range(rows.count())]
    page.screenshot(path=str(ARTIFACTS / "ui-site_qc-failed-sites.png"))
    for r in failed.itertuples():
        row = next((t for t in texts if r.Metadata_Well in t and str(r.Metadata_Site) in t), None)
        assert row is not None, f"{r.Metadata_Well} s{r.Metadata_Site} missing from the failed-site table"
        for part in str(r.qc_reason).split(CHANNEL_SEP):
            head = part.strip()[:24].replace("|", "¦")
            assert head in row, f"reason part {part!r} of {r.Metadata_Well} s{r.Metadata_Site} not in {row!r}"
    page.keyboard.press("Escape")


def _check_clusterings_page(page, base: str) -> None:
    """The clusterings page shows the headline numbers (>= 10 numeric entries, per method)
    and the compact comparison table, not nan."""
    page.goto(f"{base}/assets/clusterings", wait_until="networkidle")
    page.get_by_text("pca/svm_accuracy_donor_grouped", exact=True).first.wait_for()
    keys = ["pca/svm_accuracy_donor_grouped", "pca/v_measure", "pca/map_condition", "pca/lodo_accuracy",
            "pca/rho_group", "cells/svm_accuracy_donor_grouped", "cells/v_measure", "cells/map_condition",
            "cells/lodo_accuracy", "cells/rho_group"]
    for k in keys:
        row = page.get_by_role("row").filter(has=page.get_by_text(k, exact=True)).first
        value = row.inner_text().replace(k, "").strip()
        assert re.search(r"-?\d+(\.\d+)?", value), f"{k}: no number shown ({value!r})"
    page.screenshot(path=str(ARTIFACTS / "ui-clusterings.png"), full_page=True)
    page.get_by_role("row").filter(has_text="comparison").get_by_text("Show Markdown").first.click()
    dialog = page.get_by_role("dialog")
    dialog.locator("table").first.wait_for()
    header = dialog.locator("table tr").first.inner_text()
    assert "pca" in header and "cells" in header
    assert "nan" not in dialog.inner_text().lower()
    box = dialog.locator("table").first.bounding_box()
    assert box["width"] <= 1400, f"comparison table {box['width']} px wide: does not fit the dialog"
    page.screenshot(path=str(ARTIFACTS / "ui-clusterings-comparison.png"))
