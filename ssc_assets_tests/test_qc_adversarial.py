"""QC on adversarial plates it was not tuned on: objective split, strong phenotypes, artifacts,
whole-plate failures. Ground truth comes from the simulator's truth folder."""

import pandas as pd
import pytest

from ssc_assets.core.ingest.site_tables import build_raw_sites, site_qc_in_process, site_table
from ssc_assets.core.simulate import load_site_truth, simulate_adversarial

HELD_OUT_SEED = 11  # development used seeds 1-3


def qc_sites(plate) -> pd.DataFrame:
    return site_table(site_qc_in_process(build_raw_sites(plate).table))


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory):
    root = tmp_path_factory.mktemp("adv")
    plates = simulate_adversarial(root / "plates", root / "truth", seed=HELD_OUT_SEED, image_size=192, n_wells=20)
    out = {}
    for p in plates:
        out[p.name] = qc_sites(p).merge(load_site_truth(root / "truth", p.name), on=["Metadata_Well", "Metadata_Site"])
    return out


def test_split_plate_recall_precision_and_no_biology_failures(adversarial):
    m = next(v for k, v in adversarial.items() if k.endswith("SPLIT"))
    art = m.artifact != ""
    failed = ~m.passed_qc
    recall = (art & failed).sum() / art.sum()
    precision = (art & failed).sum() / max(failed.sum(), 1)
    assert art.sum() >= 8 and set(m.artifact[art]) == {"blur", "saturated", "empty", "debris"}
    assert recall >= 0.9, m[art & ~failed][["Metadata_Well", "Metadata_Site", "artifact"]]
    assert precision >= 0.8, m[~art & failed][["Metadata_Well", "Metadata_Site", "qc_reason"]]
    good = m[~art]
    assert good.objective.nunique() == 2 and "SSCHL" in set(good.group)
    for col in ("objective", "group"):
        rate = good.groupby(col).passed_qc.apply(lambda s: 1 - s.mean())
        assert (rate <= 0.03).all(), rate


@pytest.mark.parametrize("kind", ["BLANK", "SATURATED", "BLURRED"])
def test_plate_bad_throughout_fails_every_site(adversarial, kind):
    m = next(v for k, v in adversarial.items() if k.endswith(kind))
    assert len(m) >= 8 and (~m.passed_qc).all(), m[m.passed_qc]
    word = {"BLANK": "empty field", "SATURATED": "saturated", "BLURRED": "out of focus"}[kind]
    assert m.qc_reason.str.contains(word).all()
