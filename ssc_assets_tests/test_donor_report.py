"""Donors ranked by SSc-likeness in the clustering headline and report: the ranking figure,
the display table, the headline rows from the donor summary, the choice of the method shown
and the batch-effect / supervision notes."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ssc_assets.core.analysis import comparison as cmp
from ssc_assets.core.analysis import report as rp
from ssc_assets.core.plots.donors import donor_ranking_png, donor_table

PNG = b"\x89PNG\r\n\x1a\n"


def donor_rows(method: str, scores: dict[str, tuple[str, float]], half: float = 0.25, n_wells: int = 4) -> list[dict]:
    """Donor-table rows: donor -> (group, score); interval score +- half; rank NOT in score order
    (the display must sort by score itself)."""
    rows = []
    for i, (donor, (group, s)) in enumerate(scores.items()):
        rows.append({"Metadata_Method": method, "Metadata_Donor": donor, "Metadata_Condition": "HC" if group == "HC" else "SSc",
                     "Metadata_Group": group, "n_wells": n_wells, "score": s, "score_low": s - half, "score_high": s + half,
                     "rank": i + 1, "predicted": "SSc" if s > 0 else "HC", "correct": True, "well_accuracy": 0.75})
    return rows


SCORES = {"HC-1": ("HC", -1.5), "SSC-2": ("SSC", 0.4), "SSCHL-3": ("SSCHL", 1.23456), "HC-4": ("HC", 0.1),
          "SSC-5": ("SSC", -0.2), "SSCHL-6": ("SSCHL", 2.5)}
BY_SCORE = ["SSCHL-6", "SSCHL-3", "SSC-2", "HC-4", "SSC-5", "HC-1"]  # the order a reader must see


def donors_frame(methods=("pca", "classifier", "cells")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for k, m in enumerate(methods):
        jitter = {d: (g, s + (0.1 * k if k else 0.0) * rng.normal()) for d, (g, s) in SCORES.items()}
        rows += donor_rows(m, jitter if k else SCORES)
    return pd.DataFrame(rows)


def summary_frame() -> pd.DataFrame:
    """rho: cells and classifier tie at 0.7; cells has the higher LODO accuracy -> cells is best."""
    return pd.DataFrame({
        "Metadata_Method": ["pca", "classifier", "cells"], "n_wells": [24, 24, 24], "n_donors": [6, 6, 6],
        "grouped_accuracy": [0.55, 0.7, 0.75], "lodo_accuracy": [0.5, 0.6, 0.8], "lodo_balanced_accuracy": [0.5, 0.6, 0.8],
        "lodo_donor_accuracy": [0.5, 0.667, 0.833], "chance": [0.667] * 3, "permutation_p": [0.4, 0.05, 0.01],
        "n_permutations": [200] * 3, "rho_group": [0.2, 0.7, 0.7], "rho_group_p": [0.7, 0.12, 0.12],
        "vmeasure_plate": [0.6, 0.1, 0.05], "vmeasure_acquisition": [0.3, 0.1, np.nan],
        "vmeasure_condition": [0.1, 0.3, 0.4]})


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG)
    img = Image.open(io.BytesIO(png))
    img.verify()
    return Image.open(io.BytesIO(png)).size


# ---------------------------------------------------------------- figure and table


def test_ranking_png_one_method_and_small_multiples_fit_the_report():
    donors = donors_frame()
    w1, h1 = png_size(donor_ranking_png(donors, "cells", summary=summary_frame()))
    assert 500 <= w1 <= 1100 and h1 >= 300
    six = pd.concat([donors_frame((m,)).assign(Metadata_Method=m)
                     for m in ("pca", "autoencoder", "classifier", "densenet", "profiles", "cells")])
    w6, h6 = png_size(donor_ranking_png(six))
    assert 700 <= w6 <= 1100 and h6 > h1  # two rows of three panels, never wider than the report column
    w, _ = png_size(donor_ranking_png(donors.drop(columns=["Metadata_Method"]).iloc[:6], rho=0.5, rho_p=0.01))
    assert w <= 1100
    assert png_size(donor_ranking_png(donors.iloc[:0]))[0] > 0  # no donors: a readable placeholder


def test_donor_table_sorted_by_score_with_intervals():
    t = donor_table(donors_frame(), "pca")
    assert list(t.columns) == ["rank", "donor", "group", "score [low, high]", "n wells", "predicted"]
    assert t["donor"].tolist() == BY_SCORE
    assert t["group"].tolist() == ["SSCHL", "SSCHL", "SSC", "HC", "SSC", "HC"]
    row = t.set_index("donor").loc["SSCHL-3"]
    assert row["score [low, high]"] == "1.23 [0.985, 1.48]"
    assert row["n wells"] == "4" and row["predicted"] == "SSc"
    assert t.set_index("donor").at["HC-1", "predicted"] == "HC"
    # only the asked method's rows; NaN score last and shown as n/a
    d = donors_frame(("pca",))
    d.loc[d["Metadata_Donor"] == "SSCHL-6", ["score", "score_low", "score_high"]] = np.nan
    t2 = donor_table(d, "pca")
    assert len(t2) == 6 and t2["donor"].iloc[-1] == "SSCHL-6" and t2["score [low, high]"].iloc[-1] == "n/a"


# ---------------------------------------------------------------- headline


def hand_results() -> dict[str, dict]:
    base = {"n_wells": 24, "n_donors": 6, "svm_chance": 0.5, "svm_accuracy_donor_grouped": 0.6,
            "svm_accuracy_donor_grouped_std": 0.1, "kmeans_v_measure": 0.05}
    return {
        "pca": {**base, "lodo_accuracy": 0.81349, "chance": 0.5, "permutation_p": 0.047619, "rho_group": 0.61237,
                "rho_group_p": 0.0312, "vmeasure_plate": 0.4, "vmeasure_acquisition": float("nan"),
                "vmeasure_condition": 0.123456},
        "cells": {**base, "lodo_accuracy": 0.9, "chance": 0.5, "permutation_p": 0.004975, "rho_group": -0.5,
                  "rho_group_p": 0.0002, "vmeasure_plate": 0.01, "vmeasure_acquisition": 0.02,
                  "vmeasure_condition": 0.3},
        "classifier": dict(base),  # no donor summary for this one
    }


def test_headline_rows_from_the_donor_summary():
    results = hand_results()
    t = cmp.headline_table(results, thesis=False)
    labels = t["metric"].tolist()
    new = ["acc. leave-one-donor-out", "LODO permutation p", "ρ donors vs HC<SSc<SSCHL"]
    i = labels.index("acc. ungrouped (leaky)")
    assert labels[i + 1:i + 4] == new
    j = labels.index("V-measure (2 PCs)")
    assert labels[j + 1:j + 4] == [f"V-measure* vs {f}" for f in ("plate", "objective", "condition")]
    t = t.set_index("metric")
    assert t.at["acc. leave-one-donor-out", "pca"] == "0.813"
    assert t.at["LODO permutation p", "pca"] == "0.0476"
    assert t.at["ρ donors vs HC<SSc<SSCHL", "pca"] == "0.612, p=0.031"
    assert t.at["ρ donors vs HC<SSc<SSCHL", "cells"] == "-0.5, p<0.001"
    assert t.at["V-measure* vs plate", "pca"] == "0.4"
    assert t.at["V-measure* vs objective", "pca"] == "n/a"
    assert t.at["V-measure* vs condition", "pca"] == "0.123"
    assert t.at["LODO permutation p", "cells"] == "0.00498"
    for label in [*new, "V-measure* vs plate", "V-measure* vs objective"]:
        assert t.at[label, "classifier"] == "n/a"  # a method without donor scores: n/a, never nan

    md = cmp.headline_markdown(results)
    assert "nan" not in md.lower()
    for line in md.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4 and len(cells[0]) <= 24 and all(len(c) <= 16 for c in cells[1:]), line

    # no donor summary anywhere: the rows are left out
    plain = {m: {k: v for k, v in r.items() if k not in cmp.DONOR_SUMMARY_KEYS} for m, r in results.items()}
    assert not set(new) & set(cmp.headline_table(plain)["metric"])


def test_headline_metadata_from_the_donor_summary():
    meta = cmp.headline_metadata(hand_results())
    assert meta["pca/lodo_accuracy"] == pytest.approx(0.8135)
    assert meta["pca/lodo_permutation_p"] == pytest.approx(0.0476)
    assert meta["pca/rho_group"] == pytest.approx(0.6124)
    assert meta["pca/vmeasure_plate"] == pytest.approx(0.4)
    assert meta["cells/vmeasure_acquisition"] == pytest.approx(0.02)
    assert "pca/vmeasure_acquisition" not in meta  # NaN: left out
    assert not any(k.startswith("classifier/") and ("lodo" in k or "rho" in k) for k in meta)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in meta.values())


def test_trust_notes_batch_effect_and_supervision():
    results = hand_results()
    notes = cmp.trust_notes(results)
    batch = [n for n in notes if "more than the disease" in n]
    assert len(batch) == 1 and "pca" in batch[0] and "cells" not in batch[0]  # pca: plate 0.4 > condition 0.123
    assert "clusters follow the plate/objective more than the disease" in batch[0]
    sup = [n for n in notes if "Supervised" in n]
    assert len(sup) == 1 and "classifier" in sup[0] and "optimistic" in sup[0] and "densenet" not in sup[0]
    assert "cells is scored out of fold" in sup[0]
    # no batch effect, no supervised method, no cells: neither note
    calm = {"pca": {**results["pca"], "vmeasure_plate": 0.05}}
    text = " ".join(cmp.trust_notes(calm))
    assert "more than the disease" not in text and "Supervised" not in text and "out of fold" not in text
    # the objective alone can trigger it
    obj = {"profiles": {"vmeasure_plate": 0.0, "vmeasure_acquisition": 0.5, "vmeasure_condition": 0.2}}
    assert any("profiles (objective 0.5 vs condition 0.2)" in n for n in cmp.trust_notes(obj))


# ---------------------------------------------------------------- report


def wells_frame(method: str) -> pd.DataFrame:
    rows = []
    for d, (g, _) in SCORES.items():
        for p, plate in enumerate(("P1", "P2")):
            rows.append({"Metadata_Plate": plate, "Metadata_Well": f"{'BC'[p]}{list(SCORES).index(d) + 2:02d}",
                         "Metadata_Donor": d, "Metadata_Condition": "HC" if g == "HC" else "SSc", "Metadata_Group": g,
                         "Metadata_Method": method, "Metadata_n_sites": 4, "f0": 1.0, "f1": 2.0})
    return pd.DataFrame(rows)


def test_best_method_highest_rho_then_lodo():
    s = summary_frame()
    assert rp.best_donor_method(s) == "cells"  # tie on rho 0.7, cells has the higher LODO accuracy
    assert rp.best_donor_method(s, methods=["pca", "classifier"]) == "classifier"
    s2 = s.assign(rho_group=[np.nan, 0.1, np.nan])
    assert rp.best_donor_method(s2) == "classifier"  # NaN rho never wins
    assert rp.best_donor_method(s.assign(rho_group=np.nan)) == "cells"  # no rho at all: LODO accuracy
    # from results dicts when no summary frame is given
    assert rp.best_donor_method(None, hand_results()) == "pca"


def test_report_donor_section_after_the_headline_table():
    results = {m: {**hand_results()["pca"], "n_wells": 12} for m in ("pca", "classifier", "cells")}
    wells = pd.concat([wells_frame(m) for m in results], ignore_index=True)
    html = rp.clustering_report_html(results, wells, preset=["ssc-classifier v1: 4 epochs (thesis: 30)"],
                                     donors=donors_frame(), donor_summary=summary_frame())
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    order = [text.index(s) for s in ("Demo preset: not meaningful", "id='headline'>Headline", "acc. leave-one-donor-out",
                                     "id='donors'>Donors ranked by SSc-likeness", "id='headline-figure'>",
                                     "id='data'>Data: plates", "id='details'>Details", "id='donors-all'>",
                                     "Method: pca")]
    assert order == sorted(order)
    donors_part = text[text.index("id='donors'>"):text.index("id='headline-figure'>")]
    assert "Shown: cells" in donors_part  # rho tie 0.7 with classifier, cells has the higher LODO accuracy
    assert donors_part.count("<img") == 1 and "cells: donors ranked" in donors_part
    for head in ("LODO acc.", "chance", "permutation p", "ρ vs HC&lt;SSc&lt;SSCHL", "V plate", "V objective", "V condition"):
        assert head in donors_part, head
    assert "0.7, p=0.12" in donors_part
    details = text[text.index("id='donors-all'>"):text.index("Method: pca")]
    for m in ("pca", "classifier", "cells"):
        assert f"{m}: donors ranked by SSc-likeness" in details
    for d in SCORES:
        assert details.count(f">{d}<") == 3, d  # every donor in each method's table
    assert "1.23 [0.985, 1.48]" in details
    pca_table = details[details.index("pca: donors ranked"):details.index("classifier: donors ranked")]
    assert [pca_table.index(f">{d}<") for d in BY_SCORE] == sorted(pca_table.index(f">{d}<") for d in BY_SCORE)
    assert "clusters follow the plate/objective more than the disease" in text
    assert ">nan<" not in text.lower()


def test_report_without_donors_is_unchanged():
    results = {"pca": {k: v for k, v in hand_results()["pca"].items() if k not in cmp.DONOR_SUMMARY_KEYS}}
    html = rp.clustering_report_html(results, wells_frame("pca"))
    assert "id='donors'" not in html and "id='donors-all'" not in html and "id='headline-figure'" not in html
    headline = html[html.index("id='headline'>"):html.index("id='data'>")]
    assert "<img" in headline


def test_real_donor_report_end_to_end():
    """donor_report's own output drives the figure, the table and the report."""
    from ssc_assets.core.analysis.donor_scores import donor_report

    rng = np.random.default_rng(3)
    rows = []
    for d in range(8):
        g = ["HC", "SSC", "HC", "SSCHL"][d % 4]
        centre = rng.normal(0, 0.5, 4) + {"HC": 0.0, "SSC": 1.5, "SSCHL": 3.0}[g]
        for plate in ("P1", "P2"):
            for rep in range(2):
                rows.append({"Metadata_Plate": plate, "Metadata_Well": f"B{d * 2 + rep + 2:02d}", "Metadata_Donor": f"D{d}",
                             "Metadata_Condition": "HC" if g == "HC" else "SSc", "Metadata_Group": g,
                             **{f"f{j}": v for j, v in enumerate(centre + rng.normal(0, 0.3, 4))}})
    wells = pd.DataFrame(rows)
    donors, summary = donor_report({"pca": wells, "profiles": wells.assign(f0=rng.normal(size=len(wells)))},
                                   n_permutations=5, n_boot=100)
    png = donor_ranking_png(donors, summary=summary)
    assert png_size(png)[0] <= 1100
    t = donor_table(donors, "pca")
    scores = donors[donors["Metadata_Method"] == "pca"].set_index("Metadata_Donor")["score"]
    assert t["donor"].tolist() == scores.sort_values(ascending=False).index.tolist()
    results = {m: {"n_wells": len(wells), **r} for m, r in summary.set_index("Metadata_Method").to_dict("index").items()}
    html = rp.clustering_report_html(results, wells.assign(Metadata_Method="pca"), donors=donors, donor_summary=summary)
    best = rp.best_donor_method(summary)
    assert f"Shown: {best}" in html
    for d in donors["Metadata_Donor"].unique():
        assert f">{d}<" in html


def test_demo_plates_get_the_banner_even_with_cpu_preset_models():
    from ssc_assets.core.analysis.comparison import DEMO_NOTE, SYNTHETIC_NOTE

    results = {"cells": {"svm_chance": 0.625}}
    assert not any(n.startswith(DEMO_NOTE) for n in cmp.trust_notes(results))
    first = cmp.trust_notes(results, synthetic=True)[0]
    assert first.startswith(DEMO_NOTE) and SYNTHETIC_NOTE in first
    both = cmp.trust_notes(results, ["ssc-pca v1: trained with the demo preset"], synthetic=True)
    assert sum(n.startswith(DEMO_NOTE) for n in both) == 1 and "ssc-pca" in both[0] and SYNTHETIC_NOTE in both[0]
