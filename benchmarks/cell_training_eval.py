"""Evaluation: single-cell CNN vs the PCA baseline on a simulated 2-plate study (issue 11).

    python benchmarks/cell_training_eval.py [--size 768] [--wells 16] [--sites 4] [--seed 9001]
        [--gain 0.0] [--crop 128] [--downsample 2] [--cap 32] [--max-seconds 540] [--folds 5]

1. Simulates two plates (held-out seeds, not those of the tests or the demo) with
   :func:`~ssc_assets.core.simulate.strong_donors` (3 HC, 3 SSC, 3 SSCHL donors, replicated on
   both plates), one objective per plate (PlanApo-0.75 / ELWD-0.45: a batch effect),
   ``--gain`` phenotype intensity gain (0 = morphology only), no failed sites.
2. Runs the product's own core steps without Dagster: ``build_raw_sites`` (ingest),
   per-image ``image_background`` + ``profile_from_backgrounds`` (illumination profiles),
   ``correct_site`` and ``mask_site`` (image/site_tasks), written to OME-Zarr stores with
   ``HcsPlateWriter``; the site table of ``learn.fit.training_sites``.
3. Methods, all scored on the same wells with donors never seen by the model that scores them:
   * ``PCA (site 64 px)``: the seed's baseline features (``fit.site_vectors``, PCA with 16
     components, unsupervised on all sites), well medians, per-plate HC normalisation;
   * ``cell CNN (out-of-fold logit)``: cell crops (``learn.cell_crops``), the ``cpu`` preset
     (``learn.cell_training``) in donor-grouped folds; each well's score is the median logit
     of its cells from the fold that held its donor out.
   Columns: donor-grouped accuracy (PCA: donor-grouped k-fold RBF SVM, ``svm_cv_accuracy``;
   CNN: its out-of-fold well predictions, logit > 0), LODO accuracy (leave-one-donor-out
   linear SVM on the normalised well features; for the CNN its one feature is the out-of-fold
   score, so LODO only re-fits the threshold), Spearman rho of the per-donor score
   (``donor_scores``) vs the TRUE simulated severity, and wall time of the method.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def process_plate(plate_dir: Path, work: Path):
    """Ingest -> illumination -> correction -> masks, as the assets do (no QC: no failed sites)."""
    from ssc_assets.core.image.illumination import profile_from_backgrounds
    from ssc_assets.core.image.site_tasks import (
        CorrectSiteTask,
        MaskSiteTask,
        PreprocessParams,
        correct_site,
        illumination_background,
        mask_site,
    )
    from ssc_assets.core.ingest.channels import IMAGE_CHANNELS
    from ssc_assets.core.ingest.site_tables import build_raw_sites
    from ssc_assets.core.io.ome_zarr_store import HcsPlateWriter

    raw = build_raw_sites(plate_dir).table
    plate = str(raw["Metadata_Plate"].iloc[0])
    shape = (int(raw["height"].iloc[0]), int(raw["width"].iloc[0]))
    profiles = []
    for ch in IMAGE_CHANNELS:
        paths = raw.loc[raw["channel"] == ch, "path"].tolist()
        prof = profile_from_backgrounds([illumination_background((p, shape)) for p in paths], shape, darkfield="auto")
        f = work / f"{plate}_{ch}_flatfield.npy"
        np.save(f, prof.flatfield.astype(np.float32))
        profiles.append((ch, str(f), float(prof.darkfield)))
    store, masks_store = str(work / f"{plate}.ome.zarr"), str(work / f"{plate}_masks.ome.zarr")
    sites = []
    with HcsPlateWriter(store, plate, list(IMAGE_CHANNELS)) as w:
        for (well, site), grp in raw.groupby(["Metadata_Well", "Metadata_Site"], sort=True):
            paths = dict(zip(grp["channel"], grp["path"]))
            task = CorrectSiteTask(well, int(site), tuple((ch, paths[ch]) for ch in IMAGE_CHANNELS), tuple(profiles),
                                   shape, PreprocessParams())
            img = correct_site(task)["image"]
            w.write_site(well, int(site), img)
            sites.append([well, int(site)])
    side = int(img.shape[-1])
    with HcsPlateWriter(masks_store, plate, ["weight_map"]) as w:
        for well, site in sites:
            m = mask_site(MaskSiteTask(store, well, site, tuple(IMAGE_CHANNELS)))["masks"]
            w.write_site(well, site, m["weight_map"][None], labels={k: v for k, v in m.items() if k != "weight_map"})
    from ssc_assets.core.learn.inputs import PlateImages, PlateMasks

    done = tuple((w, int(s)) for w, s in sites)
    return PlateImages(plate, store, done, side), PlateMasks(plate, masks_store, done), raw


def pca_wells(table: pd.DataFrame, n_components: int = 16, size: int = 64) -> pd.DataFrame:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from ssc_assets.core.learn.embeddings import embedding_frame, well_embeddings
    from ssc_assets.core.learn.fit import site_vectors

    X = StandardScaler().fit_transform(site_vectors(table, size))
    Z = PCA(n_components=min(n_components, len(X) - 1), random_state=0).fit_transform(X)
    return well_embeddings(embedding_frame(table, "pca", Z.astype(np.float32)))


def cell_pca_wells(data, n_components: int = 16) -> pd.DataFrame:
    """PCA of the flattened, standardised cell crops (unsupervised, all cells), well medians."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from ssc_assets.core.learn.cell_training import aggregate_cells

    X = StandardScaler().fit_transform(data.crops.reshape(len(data), -1))
    Z = PCA(n_components=n_components, random_state=0).fit_transform(X)
    return aggregate_cells(data.table, Z.astype(np.float32), "cell_pca")[1]


def evaluate(wells: pd.DataFrame, severity: dict[str, float], score_col: str | None, grouped_acc: float | None,
             n_permutations: int) -> dict:
    from ssc_assets.core.analysis import donor_scores as DS
    from ssc_assets.core.analysis.clustering import svm_cv_accuracy

    w = DS.normalize_wells(wells, features=[score_col] if score_col else None)
    feats = [score_col] if score_col else DS.wells_features(w)
    y = (w["Metadata_Condition"] == "SSc").astype(int).to_numpy()
    if grouped_acc is None:
        grouped_acc = svm_cv_accuracy(w[feats].to_numpy(), y, groups=w["Metadata_Donor"].to_numpy(), n_splits=5)["accuracy"]
    lodo = DS.lodo_accuracy(w, feats)
    perm = DS.permutation_pvalue(w, feats, n_permutations=n_permutations, observed=lodo["balanced_accuracy"])
    # per-donor score: the out-of-fold CNN score (raw logits) or the LODO SVM decision
    donors = DS.donor_scores(wells if score_col else w, feats, score_col=score_col, n_boot=1000)
    donors["severity"] = donors["Metadata_Donor"].map(severity)
    rho = DS.severity_spearman(donors, order={}, group="severity")
    rho_g = DS.severity_spearman(donors)
    vm = DS.batch_vmeasure(wells, feats).set_index("factor")["v_measure"]
    return {"grouped": grouped_acc, "lodo": lodo["accuracy"], "chance": lodo["chance"], "perm_p": perm["p_value"],
            "rho": rho["rho"], "rho_p": rho["p_value"], "rho_group": rho_g["rho"], "donor_acc": donors["correct"].mean(),
            "vm_plate_raw": vm.get("Metadata_Plate", np.nan), "donors": donors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--wells", type=int, default=16)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--seed", type=int, default=9001)
    ap.add_argument("--gain", type=float, default=0.0)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--downsample", type=int, default=2)
    ap.add_argument("--cap", type=int, default=32)
    ap.add_argument("--border", default="skip")
    ap.add_argument("--max-seconds", type=float, default=540.0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--permutations", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="pca,cnn,ae,cellpca",
                    help="comma list: pca (site), cnn (cell CNN out of fold), ae (cell autoencoder), cellpca (PCA of crops)")
    ap.add_argument("--ae-seconds", type=float, default=240.0)
    args = ap.parse_args()

    import torch

    from ssc_assets.core.learn.cell_crops import CropParams, build_crop_dataset
    from ssc_assets.core.learn.cell_training import CellTrainParams, aggregate_cells, cross_validate_cells
    from ssc_assets.core.learn.fit import training_sites
    from ssc_assets.core.simulate import DEMO_OBJECTIVES, PlateSpec, default_wells, load_site_truth, simulate_plate, strong_donors

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        corrected, masks, raws, truth = {}, {}, {}, []
        for p in range(2):
            name = f"SSC-EVAL-{args.seed}-{p + 1}"
            spec = PlateSpec(wells=default_wells(args.wells), donors=strong_donors(), n_sites=args.sites,
                             image_size=args.size, objective=DEMO_OBJECTIVES[p], n_failed_sites=0,
                             debris_probability=0.1, phenotype_gain=args.gain)
            simulate_plate(tmp / "plates", tmp / "truth", name, spec, seed=args.seed * 10 + p)
            c, m, raw = process_plate(tmp / "plates" / name, tmp)
            plate = str(raw["Metadata_Plate"].iloc[0])
            corrected[plate], masks[plate], raws[plate] = c, m, raw
            truth.append(load_site_truth(tmp / "truth", name))
        t_prep = time.perf_counter() - t
        severity = pd.concat(truth).drop_duplicates("donor_id").set_index("donor_id")["severity"].to_dict()
        sites = training_sites(corrected.values(), raws, masks.values())
        print(f"# cell_training_eval: 2 plates x {args.wells} wells x {args.sites} sites at {args.size} px "
              f"(corrected {corrected[plate].side} px), seed {args.seed}, gain {args.gain}, {os.cpu_count()} CPUs, "
              f"{args.threads} torch threads; simulate + correct + mask: {t_prep:.0f} s", flush=True)

        rows = []
        methods = set(args.methods.split(","))
        if "pca" in methods:
            t = time.perf_counter()
            pw = pca_wells(sites)
            r = evaluate(pw, severity, None, None, args.permutations)
            rows.append(("PCA (site 64 px, 16 PCs)", r, time.perf_counter() - t))

        t = time.perf_counter()
        cp = CropParams(size=args.crop, downsample=args.downsample, border=args.border, max_per_site=args.cap)
        data = build_crop_dataset(sites, cp)
        t_crops = time.perf_counter() - t
        print(f"crops: {len(data)} of {cp.out_size}x{cp.out_size} px ({args.crop} px window / {args.downsample}) "
              f"in {t_crops:.0f} s; per donor: {data.table.groupby('Metadata_Donor').size().to_dict()}", flush=True)
        if "cellpca" in methods:
            t = time.perf_counter()
            rows.append(("PCA of cell crops (16 PCs)", evaluate(cell_pca_wells(data), severity, None, None,
                                                                args.permutations), time.perf_counter() - t))
        if "ae" in methods:
            from ssc_assets.core.learn.cell_autoencoder import (
                CellAutoencoderParams,
                embed_cells_autoencoder,
                train_cell_autoencoder,
            )

            t = time.perf_counter()
            res = train_cell_autoencoder(data, CellAutoencoderParams(max_seconds=args.ae_seconds, threads=args.threads),
                                         on_epoch=lambda e, m: print(f"  AE epoch {e}: train {m['train_loss']:.4f} "
                                                                     f"val {m['val_loss']:.4f} ({m['seconds']:.0f} s)",
                                                                     flush=True))
            _, aw = aggregate_cells(data.table, embed_cells_autoencoder(res.model, data.crops), "cell_autoencoder")
            rows.append((f"cell autoencoder (best epoch {res.best_epoch}, {res.stopped})",
                         evaluate(aw, severity, None, None, args.permutations), time.perf_counter() - t))
        if "cnn" not in methods:
            _print_rows(rows)
            return
        params = CellTrainParams.cpu(max_seconds=args.max_seconds, epochs=args.epochs, threads=args.threads)
        cv = cross_validate_cells(
            data, params, n_folds=args.folds,
            on_fold=lambda f, rec: print(f"  fold {f}: test {rec['test_donors']} val {rec['val_donors']} best epoch "
                                         f"{rec['best_epoch']}/{len(rec['history'])} ({rec['stopped']}), {rec['seconds']:.0f} s, "
                                         f"val well acc {rec['history'][rec['best_epoch'] - 1]['val_well_accuracy']:.2f}",
                                         flush=True))
        emb = cv.cells.filter(regex=r"^f\d{4}$").to_numpy()
        _, cw = aggregate_cells(data.table, emb, "cell_cnn", logits=cv.cells["Metadata_Logit"].to_numpy())
        oof_acc = float(((cw["Metadata_Score"] > 0) == (cw["Metadata_Condition"] == "SSc")).mean())
        cw_score = cw.drop(columns=[c for c in cw.columns if c.startswith("f0")]).rename(columns={"Metadata_Score": "score"})
        r = evaluate(cw_score, severity, "score", oof_acc, args.permutations)
        rows.append((f"cell CNN {args.crop}/{args.downsample} px (out-of-fold logit)", r, time.perf_counter() - t))
        _print_rows(rows)


def _print_rows(rows: list) -> None:
    print("\n| method | donor-grouped acc | LODO acc | chance | perm. p (LODO) | donor acc | Spearman rho vs true severity (p) "
          "| rho vs HC<SSC<SSCHL | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r, sec in rows:
        print(f"| {name} | {r['grouped']:.3f} | {r['lodo']:.3f} | {r['chance']:.3f} | {r['perm_p']:.3f} | "
              f"{r['donor_acc']:.2f} | {r['rho']:.2f} ({r['rho_p']:.3f}) | {r['rho_group']:.2f} | {sec:.0f} s |")
    for name, r, _ in rows:
        print(f"\n{name}: per-donor scores")
        print(r["donors"][["Metadata_Donor", "Metadata_Group", "severity", "n_wells", "score", "score_low", "score_high",
                           "rank", "correct"]].to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
