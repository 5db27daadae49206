"""The README's settings table is the settings registry: same variables, same defaults, same
meanings (regenerate it with ``python -m ssc_assets.settings``), and no module outside the
registry reads an unregistered variable."""

import pathlib
import re

from ssc_assets import settings

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| variable | default | meaning |")
    lines = []
    for line in text[start:].splitlines():
        if not line.startswith("|"):
            break
        lines.append(line)
    return lines


def test_readme_lists_exactly_the_registry():
    rows = _readme_table()[2:]
    names = [re.match(r"\| `([A-Z_]+)` \|", r).group(1) for r in rows]
    assert names == [s.name for s in settings.SETTINGS], "README settings table and ssc_assets.settings.SETTINGS differ"
    defaults = [r.split(" | ")[1] for r in rows]
    assert defaults == [s.shown_default for s in settings.SETTINGS]


def test_readme_table_is_generated_from_the_registry():
    assert "\n".join(_readme_table()) == settings.markdown_table(), "run `python -m ssc_assets.settings` and paste the table"


def test_registered_defaults_are_the_used_defaults(monkeypatch):
    for s in settings.SETTINGS:
        monkeypatch.delenv(s.name, raising=False)
    assert settings.time_point() == int(settings.BY_NAME["SSC_TIME_POINT"].default)
    assert settings.retrain_cron() == "0 2 * * *" and settings.cluster_cron() == "0 * * * *"
    assert settings.compute_backend() == "process" and settings.dask_address() is None
    assert settings.mlflow_tracking_uri().startswith("sqlite:///")
    monkeypatch.setenv("SSC_DASK_ADDRESS", "tcp://x:8786")
    assert settings.compute_backend() == "dask"


def test_every_variable_read_in_the_package_is_registered():
    pattern = re.compile(r"""(?:environ(?:\.get)?\(|environ\[|getenv\(|raw\(|_set\()\s*["']([A-Z][A-Z0-9_]+)["']""")
    seen = set()
    for path in (ROOT / "ssc_assets").rglob("*.py"):
        seen |= set(pattern.findall(path.read_text()))
    assert seen, "the pattern no longer finds environment reads"
    assert seen <= set(settings.BY_NAME), f"unregistered: {sorted(seen - set(settings.BY_NAME))}"
