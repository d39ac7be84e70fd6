#!/usr/bin/env python3
"""Accuracy reference: DFKDE (numpy float64) on onnxruntime EfficientNet-Lite0 features.

Usage (repository root, after scripts/export_models.py)::

    .venv/bin/python scripts/reference_auroc.py [--shared /work/shared] [--out /tmp/vigil_ref]
                                                [--variants aa224,aa256,noaa224,pil224]

Nothing here is committed: features and reports go to ``--out`` (default /tmp/vigil_ref).

1. Features.  For each data set (magnetic_tile, elpv_mono) and split (``train`` =
   train/good; ``test`` = test/good then test/<defect> folders sorted by name; files sorted
   by name inside each folder) every image is decoded like anomalib (PIL
   ``convert("RGB")``, /255, CHW), resized, ImageNet-normalised and run through
   ``models/efficientnet_lite0_pooled.onnx`` with onnxruntime (CPU).  Saved as
   ``features_<dataset>_<split>[_<variant>].npy`` (float32, [n,1280]) and
   ``files_<dataset>_<split>.txt`` (paths relative to the shared root, same order;
   the main variant ``aa224`` has no suffix).

   Preprocessing variants:
     aa224   torchvision v2 Resize((224,224), antialias=True) on the float tensor  [main]
     aa256   same at 256x256, network run at 256x256 (anomalib's default image size)
     noaa224 Resize((224,224), antialias=False) (what anomalib's ONNX export does)
     pil224  PIL uint8 resize((224,224), BILINEAR) then /255
   The ONNX graph declares 224x224; for 256 the H/W dims are made symbolic in memory.
   That is exact: TF-SAME pads for 256 equal those for 224 (both are multiples of 32).

2. DFKDE, following shared/spec/dfkde.md §2-3, in float64: PCA (16 components, thin SVD
   of the centred training matrix), SCALE scaling by the max PCA-score row norm, Gaussian
   KDE with Scott factor h = n^(-1/(d+4)), full unbiased covariance, L = chol(inv(cov)/h^2),
   stored Z = (Y - m) L, queries not centred, log-density by log-sum-exp.  Checked first
   against shared/fixtures/dfkde_golden (*_ref64_logsumexp).  An "anomalib float32"
   emulation is also scored: s = -inf where min_j ½d² > 103.97 (float32 kernel underflow)
   and pred_score = sigmoid(0.6 - 0.05 s) rounded to float32 (ties at 1.0).

3. Image AUROC (sklearn roc_auc_score, label 1 = any non-good folder, score = -log density)
   overall and per defect (that defect vs test/good) for each data set and variant, plus
   elpv without defect_p033.  Written to ``<out>/auroc.json`` and ``<out>/auroc.md``; the
   float64 test log-densities to ``<out>/logdensity_<dataset>_test[_<variant>].npy``
   (same order as ``files_<dataset>_test.txt``), for comparing a port's ``eval`` output.

Result (2026-11, torch 2.15 / onnxruntime 1.32): only ``aa224`` reproduces the project's
expected AUROCs (magnetic_tile 0.7826 vs 0.783, elpv_mono 0.8121 vs 0.812).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torchvision.transforms import v2

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = REPO_ROOT / "models" / "efficientnet_lite0_pooled.onnx"
DATASETS = ("magnetic_tile", "elpv_mono")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
VARIANTS = {
    "aa224": 224,
    "aa256": 256,
    "noaa224": 224,
    "pil224": 224,
}
EXPECTED = {"magnetic_tile": 0.783, "elpv_mono": 0.812}


# --------------------------------------------------------------------------- data
def list_split(root: Path, split: str) -> list[tuple[Path, str]]:
    """[(path, folder_label)], train = train/good; test = good first, then defects by name."""
    if split == "train":
        folders = [root / "train" / "good"]
    else:
        defects = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")
        folders = [root / "test" / "good"] + [root / "test" / d for d in defects]
    out = []
    for f in folders:
        out += [(p, f.name) for p in sorted(f.iterdir()) if p.is_file()]
    return out


def preprocess(path: Path, variant: str) -> np.ndarray:
    size = VARIANTS[variant]
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if variant == "pil224":
            a = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
            x = a.astype(np.float32).transpose(2, 0, 1) / 255.0
            return ((x - MEAN) / STD).astype(np.float32)
        a = np.asarray(rgb, dtype=np.uint8)
    t = torch.from_numpy(a.astype(np.float32).transpose(2, 0, 1) / 255.0)
    t = v2.Resize((size, size), antialias=(variant != "noaa224"))(t)
    return ((t.numpy() - MEAN) / STD).astype(np.float32)


def session(size: int) -> ort.InferenceSession:
    m = onnx.load(str(MODEL))
    if size != 224:
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[2].ClearField("dim_value")
        dims[2].dim_param = "H"
        dims[3].ClearField("dim_value")
        dims[3].dim_param = "W"
        del m.graph.value_info[:]
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def features(shared: Path, out: Path, ds: str, split: str, variant: str, sessions: dict) -> tuple[np.ndarray, list[str]]:
    suffix = "" if variant == "aa224" else f"_{variant}"
    fpath = out / f"features_{ds}_{split}{suffix}.npy"
    lpath = out / f"files_{ds}_{split}.txt"
    items = list_split(shared / "data" / ds, split)
    rels = [p.relative_to(shared).as_posix() for p, _ in items]
    if fpath.exists() and lpath.exists() and lpath.read_text().split("\n")[:-1] == rels:
        return np.load(fpath), [lab for _, lab in items]
    size = VARIANTS[variant]
    if size not in sessions:
        sessions[size] = session(size)
    sess = sessions[size]
    feats = []
    t0 = time.time()
    for i in range(0, len(items), 32):
        x = np.stack([preprocess(p, variant) for p, _ in items[i:i + 32]])
        feats.append(sess.run(["features"], {"input": x})[0])
    f = np.concatenate(feats).astype(np.float32)
    np.save(fpath, f)
    lpath.write_text("\n".join(rels) + "\n")
    print(f"  features {ds}/{split}/{variant}: {f.shape} in {time.time() - t0:.1f}s")
    return f, [lab for _, lab in items]


# --------------------------------------------------------------------------- DFKDE (float64)
class Dfkde:
    """anomalib DFKDE scoring stage, SCALE or NORM, float64, log-sum-exp (spec §2-3)."""

    def __init__(self, k: int = 16, method: str = "scale"):
        self.k, self.method = k, method

    def fit(self, feats: np.ndarray) -> "Dfkde":
        x = np.asarray(feats, dtype=np.float64)
        n = x.shape[0]
        if n < 2 * self.k:
            raise ValueError(f"need at least {2 * self.k} training rows, got {n}")
        self.mu = x.mean(0)
        xc = x - self.mu
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        self.v = vt[: self.k].T  # D x k
        y = xc @ self.v
        self.lmax = float(np.linalg.norm(y, axis=1).max())
        y = self._scale(y)
        d = self.k
        h = n ** (-1.0 / (d + 4))
        m = y.mean(0)
        yc = y - m
        cov = yc.T @ yc / (n - 1)
        p = np.linalg.inv(cov) / h ** 2
        self.l = np.linalg.cholesky(p)  # lower, P = L L^T
        self.z = yc @ self.l
        self.ln_c = float(np.sum(np.log(np.diag(self.l))) - 0.5 * d * np.log(2 * np.pi))
        self.n = n
        return self

    def _scale(self, y: np.ndarray) -> np.ndarray:
        if self.method == "scale":
            return y / self.lmax
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    def half_d2(self, q: np.ndarray) -> np.ndarray:
        y = self._scale((np.asarray(q, dtype=np.float64) - self.mu) @ self.v)
        u = y @ self.l  # queries NOT centred by the KDE mean (anomalib quirk)
        out = np.empty((u.shape[0], self.z.shape[0]))
        for i in range(0, u.shape[0], 256):  # direct differences (no |a|²-2ab+|b|² cancellation)
            diff = u[i:i + 256, None, :] - self.z[None, :, :]
            out[i:i + 256] = 0.5 * np.einsum("qnk,qnk->qn", diff, diff)
        return out

    def log_density(self, q: np.ndarray) -> np.ndarray:
        a = -self.half_d2(q)
        amax = a.max(1, keepdims=True)
        lse = amax[:, 0] + np.log(np.exp(a - amax).sum(1))
        return self.ln_c + lse - np.log(self.n)

    def anomalib_f32_score(self, q: np.ndarray) -> np.ndarray:
        """pred_score as anomalib's float32 path would round it (cliff + saturation ties)."""
        hd = self.half_d2(q)
        s = self.log_density(q)
        s = np.where(hd.min(1) > 103.97, -np.inf, s).astype(np.float32)
        with np.errstate(over="ignore"):
            return (np.float32(1) / (np.float32(1) + np.exp(np.float32(0.05) * (s - np.float32(12))))).astype(np.float32)


def check_golden(shared: Path) -> dict:
    g = shared / "fixtures" / "dfkde_golden"
    res = {}
    if not g.exists():
        return res
    for case in ("a512", "b1280"):
        tr = np.load(g / f"{case}_train_f32.npy")
        te = np.load(g / f"{case}_test_f32.npy")
        for method in ("scale", "norm"):
            ref = np.load(g / f"{case}_{method}_test_logdensity_ref64_logsumexp.npy")
            s = Dfkde(16, method).fit(tr).log_density(te)
            ln_c_ref = float(np.log(np.load(g / f"{case}_{method}_kde_norm_f32.npy")[0].astype(np.float64)))
            model = Dfkde(16, method).fit(tr)
            res[f"{case}_{method}"] = {"max_abs_ds_vs_ref64": float(np.max(np.abs(s - ref))),
                                       "ln_c": model.ln_c, "ln_c_anomalib_f32": ln_c_ref}
    return res


# --------------------------------------------------------------------------- evaluation
def aurocs(score: np.ndarray, labels: list[str]) -> dict:
    lab = np.array(labels)
    y = (lab != "good").astype(int)
    out = {"overall": float(roc_auc_score(y, score))}
    for d in sorted(set(labels) - {"good"}):
        m = (lab == "good") | (lab == d)
        out[d] = float(roc_auc_score((lab[m] == d).astype(int), score[m]))
    if "defect_p033" in labels:
        m = lab != "defect_p033"
        out["overall_without_p033"] = float(roc_auc_score(y[m], score[m]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="/work/shared")
    ap.add_argument("--out", default="/tmp/vigil_ref")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]

    golden = check_golden(shared)
    for k, v in golden.items():
        print(f"golden {k}: max|Δs| vs ref64 {v['max_abs_ds_vs_ref64']:.2e}, ln c {v['ln_c']:.4f} "
              f"(anomalib f32 {v['ln_c_anomalib_f32']:.4f})")
        assert v["max_abs_ds_vs_ref64"] < 1e-5, "numpy DFKDE disagrees with the golden reference"

    report: dict = {"golden_check": golden, "expected": EXPECTED, "results": {}}
    sessions: dict = {}
    for variant in variants:
        report["results"][variant] = {}
        for ds in DATASETS:
            ftr, _ = features(shared, out, ds, "train", variant, sessions)
            fte, labels = features(shared, out, ds, "test", variant, sessions)
            model = Dfkde(16, "scale").fit(ftr)
            s = model.log_density(fte)
            np.save(out / f"logdensity_{ds}_test{'' if variant == 'aa224' else '_' + variant}.npy", s)
            r = aurocs(-s, labels)
            r32 = aurocs(model.anomalib_f32_score(fte), labels)
            r["anomalib_f32_overall"] = r32["overall"]
            r["n_train"], r["n_test"] = len(ftr), len(fte)
            r["ln_c"] = model.ln_c
            r["n_s_below_cliff"] = int(np.sum(model.half_d2(fte).min(1) > 103.97))
            r["logdensity_train_good_range"] = [float(x) for x in np.percentile(model.log_density(ftr), [0, 50, 100])]
            r["logdensity_test_range"] = [float(s.min()), float(np.median(s)), float(s.max())]
            report["results"][variant][ds] = r
            print(f"{variant:8s} {ds:14s} AUROC {r['overall']:.4f} (anomalib-f32 {r['anomalib_f32_overall']:.4f}) "
                  + " ".join(f"{k}={v:.4f}" for k, v in r.items() if k not in ("overall", "anomalib_f32_overall")
                             and isinstance(v, float) and k != "ln_c"))

    (out / "auroc.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| variant | data set | overall | " + "per defect | f32-emul overall | match expected (±0.01) |",
             "|---|---|---|---|---|---|"]
    for variant, per in report["results"].items():
        for ds, r in per.items():
            defects = ", ".join(f"{k} {v:.4f}" for k, v in r.items()
                                if isinstance(v, float) and k not in ("overall", "anomalib_f32_overall", "ln_c"))
            ok = abs(r["overall"] - EXPECTED[ds]) <= 0.01
            lines.append(f"| {variant} | {ds} | {r['overall']:.4f} | {defects} | {r['anomalib_f32_overall']:.4f} | "
                         f"{'yes' if ok else 'no'} (expected {EXPECTED[ds]}) |")
    (out / "auroc.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
