"""Screenshots for the README and docs: the Dagster asset graph and the HTML report.

Run after ``make demo`` (it reads the demo instance and storage):

    .venv/bin/python docs/make_screenshots.py

Starts dagster-webserver on ``$DAGSTER_HOME`` (default ``.dagster_home``) on a free port,
opens the global asset lineage and the ``clusterings`` and ``donor_scores`` pages in
Chromium (Debian's ``/usr/bin/chromium`` through Playwright), renders the latest report
(``$SSC_STORAGE_DIR/reports/clusterings-latest.html``) at 1600 px, and writes PNGs to
``docs/img/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "img"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def _dismiss(page) -> None:
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=4000)
        skip.click()
    except Exception:  # noqa: BLE001 - no welcome dialog
        pass


def main() -> None:
    from playwright.sync_api import sync_playwright

    home = Path(os.environ.get("DAGSTER_HOME", REPO / ".dagster_home"))
    storage = Path(os.environ.get("SSC_STORAGE_DIR", REPO / "data" / "storage"))
    report = storage / "reports" / "clusterings-latest.html"
    OUT.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home))
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                             "-w", str(REPO / "workspace.yaml")], env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/server_info")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000}, device_scale_factor=2)
            page.set_default_timeout(60_000)
            # upstream lineage of clusterings: every asset from raw_sites on, groups expanded
            page.goto(f"{base}/assets/clusterings?view=lineage&lineageScope=upstream&lineageDepth=20",
                      wait_until="networkidle")
            _dismiss(page)
            page.wait_for_timeout(4000)
            page.screenshot(path=str(OUT / "asset-graph.png"), clip={"x": 500, "y": 200, "width": 840, "height": 670})
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            for asset in ("clusterings", "donor_scores"):
                page.goto(f"{base}/assets/{asset}", wait_until="networkidle")
                page.wait_for_timeout(1500)
                page.screenshot(path=str(OUT / f"asset-{asset}.png"), full_page=False)
            if report.exists():
                page.goto(report.resolve().as_uri(), wait_until="load")
                page.wait_for_timeout(1000)
                page.screenshot(path=str(OUT / "report.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1600, "height": 2200})
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    print(f"wrote {sorted(p.name for p in OUT.glob('*.png'))} to {OUT}")


if __name__ == "__main__":
    main()
