"""Helpers shared by the asset modules: Dagster metadata tables, MLflow PNG artifacts and the
per-site failure bookkeeping of the image, embedding and profile assets."""

from __future__ import annotations

import dagster as dg
import pandas as pd

MAX_TABLE_ROWS = 40


def md_table(df: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS) -> str:
    r"""Markdown table of the first ``max_rows`` rows, with a note on how many were left out.

    Cells never break the table: ``|`` becomes ``¦`` (Dagster's renderer ignores ``\|``),
    line breaks become spaces, missing values print as ``n/a``."""
    if df.empty:
        return "_none_"
    shown = df.head(max_rows).copy()
    for c in shown.columns:
        if not pd.api.types.is_numeric_dtype(shown[c]) or shown[c].isna().any():
            shown[c] = shown[c].astype(object).map(
                lambda v: "n/a" if v is None or (isinstance(v, float) and v != v)
                else v.replace("|", "¦").replace("\r", " ").replace("\n", " ") if isinstance(v, str) else v)
    text = shown.to_markdown(index=False)
    if len(df) > max_rows:
        text += f"\n\n_{len(df) - max_rows} more rows not shown_"
    return text


def log_png(png: bytes, artifact_file: str) -> None:
    """Log PNG bytes as the MLflow artifact ``artifact_file`` (e.g. ``figures/curves.png``)."""
    import tempfile
    from pathlib import Path

    import mlflow

    name = Path(artifact_file)
    name = name if name.suffix == ".png" else name.with_name(name.name + ".png")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name.name)
        path.write_bytes(png)
        mlflow.log_artifact(str(path), artifact_path=str(name.parent) if str(name.parent) != "." else None)


SITE_FAILURE_COLUMNS = ["Metadata_Well", "Metadata_Site", "error", "files"]


def site_failures(results, tasks, context, what: str) -> pd.DataFrame:
    """The per-site tasks that raised (one row each: well, site, error, input files), each
    logged as an error. ``results`` and ``tasks`` are parallel lists (``SiteCompute.map``)."""
    rows = []
    for t, r in zip(tasks, results):
        if not r.ok:
            context.log.error(f"{what} failed for {t.well} s{t.site}: {r.error}")
            rows.append({"Metadata_Well": t.well, "Metadata_Site": t.site, "error": r.error,
                         "files": "; ".join(p for _, p in getattr(t, "paths", ()))})
    return pd.DataFrame(rows, columns=SITE_FAILURE_COLUMNS)


def check_failure_fraction(failures: pd.DataFrame, n: int, limit: float, what: str) -> None:
    """Fail the asset (not retried) when more than ``limit`` of its ``n`` sites raised."""
    if n and len(failures) / n > limit:
        raise dg.Failure(
            allow_retries=False,
            description=f"{what}: {len(failures)}/{n} sites raised (limit {limit:.0%})",
            metadata={"failed_sites": dg.MetadataValue.md(md_table(failures))},
        )
