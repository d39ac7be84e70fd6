#!/usr/bin/env python3
"""Baseline for `vigil bench`: the usual Python route, one frame at a time, timed per stage.

Usage (repository root, after scripts/export_models.py)::

    .venv/bin/python scripts/bench_python_route.py --data DIR [--model models/efficientnet_lite0_pooled.onnx]
        [--threads 1] [--kde-points 40000] [--seconds 20] [--json]
        [--warmup 2] [--fit-images 100] [--score-impl diff|gemv] [--aux-threads 1] [--ort-spin on|off]

DIR is a folder of JPEG/PNG images; frames are taken from it cyclically (files sorted by
name).  The encoded bytes are read into memory once, before timing (vigil's pipeline also
decodes encoded frames from memory), so no stage includes disk I/O.

Stages (per frame, time.perf_counter_ns):
  decode      PIL Image.open(BytesIO) + convert("RGB") (fully decoded)
  preprocess  uint8 HWC -> float32 CHW / 255 -> torchvision Resize((224, 224), antialias=True)
              (bilinear) -> ImageNet mean/std.  Bit-identical to scripts/reference_auroc.py's
              ``aa224`` variant (checked at start-up on the first image); a contiguous CHW copy
              before the resize roughly halves its cost compared with the reference's strided view.
  backbone    onnxruntime CPUExecutionProvider, batch 1, intra_op_num_threads = --threads,
              inter_op_num_threads = 1, ORT_SEQUENTIAL, all graph optimisations.
  score       numpy float64 DFKDE scoring (shared/spec/dfkde.md §3): y = (q - mu) V / l_max,
              u = y L, log p = ln c - ln n + logsumexp(-½|u - Z_j|²) over --kde-points rows of Z.
              ``diff`` (default) forms the n×16 differences like the reference / anomalib;
              ``gemv`` uses ½|u|² - u·Z_j + ½|Z_j|² with precomputed ½|Z_j|² (one BLAS matvec).
  total       the four above, back to back.

The model is fitted once, before timing: ORT features of the folder's first 100 images
(float64 thin-SVD PCA, 16 components, SCALE scaling), the scaled PCA scores tiled and
jittered (Gaussian, 0.25 × per-component std, fixed seed) to --kde-points rows, then the
KDE fit of spec §2.5 (Scott factor, full covariance, L = chol(inv(cov)/h²), Z = (Y - m) L).
Scoring cost depends only on n and d, not on the values.

Threads: onnxruntime's intra-op pool has --threads threads (spinning as onnxruntime does by
default; --ort-spin off sets session.intra_op.allow_spinning = 0).  numpy/OpenBLAS and torch
(intra-op; inter-op 1) get --aux-threads (default 1; the environment variables are set before
numpy is imported): their per-frame work is a few ms, and on a small machine a second
OpenMP thread fighting onnxruntime's spinning pool made the resize 10-30x slower (measured on
2 cores: 2.9 ms with 1 thread, 40-77 ms with 2).  After a --warmup seconds
warm-up the loop runs for --seconds; fps = frames / wall time of the timed loop.  Peak RSS is
resource.getrusage(RUSAGE_SELF).ru_maxrss of the whole process (fit phase and imports
included).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("decode", "preprocess", "backbone", "score", "total")
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of JPEG/PNG images (used cyclically)")
    ap.add_argument("--model", default=str(REPO_ROOT / "models" / "efficientnet_lite0_pooled.onnx"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kde-points", type=int, default=40000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of untimed frames first (default 2)")
    ap.add_argument("--fit-images", type=int, default=100, help="images whose features fit PCA (default 100)")
    ap.add_argument("--score-impl", choices=("diff", "gemv"), default="diff")
    ap.add_argument("--aux-threads", type=int, default=1, help="numpy/OpenBLAS and torch threads (default 1)")
    ap.add_argument("--ort-spin", choices=("on", "off"), default="on",
                    help="onnxruntime intra-op thread spinning (default on, onnxruntime's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a = ap.parse_args()
    if a.threads < 1 or a.aux_threads < 1:
        ap.error("--threads and --aux-threads must be >= 1")
    if a.kde_points < 32:
        ap.error("--kde-points must be >= 32")
    return a


ARGS = parse_args()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = str(ARGS.aux_threads)

import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.v2.functional as TF  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

IMPORT_RSS_MB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
# np.asarray(PIL image) is read-only; the tensor made from it is only read (copied by .contiguous()).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
torch.set_num_threads(ARGS.aux_threads)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass

SIZE = 224
MEAN_NP = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD_NP = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
MEAN_T = torch.from_numpy(MEAN_NP.copy())
STD_T = torch.from_numpy(STD_NP.copy())


# --------------------------------------------------------------------------- stages
def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    return im.convert("RGB")  # convert() loads the pixels: decoding happens here


def preprocess(rgb: Image.Image) -> np.ndarray:
    a = np.asarray(rgb, dtype=np.uint8)  # H x W x 3
    t = torch.from_numpy(a).permute(2, 0, 1).contiguous().to(torch.float32).div_(255.0)
    t = TF.resize(t, [SIZE, SIZE], antialias=True)  # bilinear, antialiased
    return t.sub_(MEAN_T).div_(STD_T).numpy()[None]  # 1 x 3 x 224 x 224, float32


def preprocess_reference(rgb: Image.Image) -> np.ndarray:
    """scripts/reference_auroc.py preprocess(..., "aa224"), literally."""
    a = np.asarray(rgb, dtype=np.uint8)
    t = torch.from_numpy(a.astype(np.float32).transpose(2, 0, 1) / 255.0)
    t = v2.Resize((SIZE, SIZE), antialias=True)(t)
    return ((t.numpy() - MEAN_NP) / STD_NP).astype(np.float32)


def make_session(model: str, threads: int, spin: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


class Scorer:
    """DFKDE scoring (spec §2-3), float64 numpy.  Fit: PCA on real rows, KDE on n jittered rows."""

    def __init__(self, feats: np.ndarray, n_points: int, k: int = 16, seed: int = 0, jitter: float = 0.25):
        x = np.asarray(feats, dtype=np.float64)
        if x.shape[0] < 2 * k:
            raise SystemExit(f"need at least {2 * k} images to fit PCA, got {x.shape[0]}")
        self.mu = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mu, full_matrices=False)
        self.v = np.ascontiguousarray(vt[:k].T)  # D x k
        y = (x - self.mu) @ self.v
        self.lmax = float(np.linalg.norm(y, axis=1).max())
        y /= self.lmax
        rng = np.random.default_rng(seed)
        reps = -(-n_points // y.shape[0])
        yy = np.tile(y, (reps, 1))[:n_points]
        yy = yy + rng.standard_normal(yy.shape) * (jitter * y.std(0))
        n, d = yy.shape
        h = n ** (-1.0 / (d + 4))  # Scott
        m = yy.mean(0)
        yc = yy - m
        cov = yc.T @ yc / (n - 1)
        self.l = np.linalg.cholesky(np.linalg.inv(cov) / h ** 2)  # lower, P = L L^T
        self.z = np.ascontiguousarray(yc @ self.l)  # n x d
        self.half_zz = 0.5 * np.einsum("ij,ij->i", self.z, self.z)
        self.ln_c = float(np.sum(np.log(np.diag(self.l))) - 0.5 * d * np.log(2 * np.pi))
        self.ln_n = float(np.log(n))
        self.n = n

    def score(self, q: np.ndarray, impl: str) -> float:
        y = ((q.astype(np.float64) - self.mu) @ self.v) / self.lmax
        u = y @ self.l  # query not centred (anomalib quirk)
        if impl == "diff":
            diff = self.z - u
            a = -0.5 * np.einsum("ij,ij->i", diff, diff)
        else:
            a = self.z @ u
            a -= self.half_zz
            a -= 0.5 * float(u @ u)
        amax = float(a.max())
        return self.ln_c - self.ln_n + amax + float(np.log(np.exp(a - amax).sum()))


# --------------------------------------------------------------------------- main
def main() -> None:
    args = ARGS
    data_dir = Path(args.data)
    files = sorted(p for p in data_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise SystemExit(f"no .jpg/.jpeg/.png files in {data_dir}")
    blobs = [p.read_bytes() for p in files]

    sess = make_session(args.model, args.threads, args.ort_spin == "on")
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name

    # Faithfulness check of the fast preprocessing route (bit-identical expected).
    rgb0 = decode(blobs[0])
    dev = float(np.abs(preprocess(rgb0)[0] - preprocess_reference(rgb0)).max())
    if dev > 1e-6:
        raise SystemExit(f"fast preprocess deviates from the reference by {dev:.3g}")

    # Fit once, untimed.
    fit_n = min(args.fit_images, len(blobs))
    feats = np.concatenate([sess.run([out_name], {in_name: preprocess(decode(b))})[0] for b in blobs[:fit_n]])
    scorer = Scorer(feats, args.kde_points)

    def frame(i: int) -> tuple[int, int, int, int, int, float]:
        t0 = time.perf_counter_ns()
        rgb = decode(blobs[i % len(blobs)])
        t1 = time.perf_counter_ns()
        x = preprocess(rgb)
        t2 = time.perf_counter_ns()
        f = sess.run([out_name], {in_name: x})[0][0]
        t3 = time.perf_counter_ns()
        s = scorer.score(f, args.score_impl)
        t4 = time.perf_counter_ns()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, s

    i = 0
    end = time.perf_counter() + args.warmup
    while i < 3 or time.perf_counter() < end:
        frame(i)
        i += 1

    rows = []
    start = time.perf_counter()
    end = start + args.seconds
    while True:
        rows.append(frame(i)[:5])
        i += 1
        if time.perf_counter() >= end:
            break
    wall = time.perf_counter() - start

    t = np.array(rows, dtype=np.float64) / 1e6  # ms
    stages = {name: {"median_ms": round(float(np.median(t[:, j])), 4),
                     "p99_ms": round(float(np.percentile(t[:, j], 99)), 4)}
              for j, name in enumerate(STAGES)}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    report = {
        "route": "python-onnxruntime",
        "threads": args.threads,
        "aux_threads": args.aux_threads,
        "ort_spin": args.ort_spin,
        "fps": round(len(rows) / wall, 3),
        "frames": len(rows),
        "seconds": round(wall, 3),
        "stages": stages,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "import_rss_mb": round(IMPORT_RSS_MB, 1),
        "kde_points": scorer.n,
        "score_impl": args.score_impl,
        "images": len(blobs),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "onnxruntime": ort.__version__, "torch": torch.__version__.split("+")[0],
                     "pillow": Image.__version__},
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"route python-onnxruntime  threads {args.threads} (aux {args.aux_threads}, ort spin {args.ort_spin})  {len(rows)} frames in {wall:.1f} s  "
          f"-> {report['fps']:.1f} frames/s  ({len(blobs)} images, KDE n = {scorer.n}, score {args.score_impl})")
    print(f"{'stage':<11} {'median ms':>10} {'p99 ms':>10}")
    for name in STAGES:
        print(f"{name:<11} {stages[name]['median_ms']:>10.3f} {stages[name]['p99_ms']:>10.3f}")
    print(f"peak RSS {peak_rss_mb:.1f} MB ({IMPORT_RSS_MB:.1f} MB of it reached by the imports alone)")


if __name__ == "__main__":
    sys.exit(main())
