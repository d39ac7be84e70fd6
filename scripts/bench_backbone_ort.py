#!/usr/bin/env python3
"""onnxruntime's side of `vigil bench --backbone-only`: the same ONNX file, the same input
tensor, batch 1, timed the same way (per-frame wall time of session.run, after a 1 s warm-up,
for --seconds).  One JSON line with the keys vigil prints (backbone_ms_median, fps, ...).

    .venv/bin/python scripts/bench_backbone_ort.py --model models/efficientnet_lite0_pooled.onnx \
        [--input tests/fixtures/effnet_input.npy] [--threads 1] [--seconds 10] [--profile] [--json]

--threads is onnxruntime's intra-op pool (inter-op 1, ORT_SEQUENTIAL, all graph optimisations,
spinning off so a 2-core box is not starved).  --profile adds onnxruntime's own per-node
timings (SessionOptions.enable_profiling), grouped by convolution kind (depthwise k×k,
pointwise 1×1, other k×k) read from the ONNX graph.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort


def conv_kinds(model_path: str) -> dict[str, str]:
    """Output name of every node -> the kind of convolution it belongs to (through
    element-wise ops fused after it), for grouping onnxruntime's profile."""
    g = onnx.load(model_path).graph
    init = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    kinds = {}
    for out, n in prod.items():
        m = n
        # Walk back through the element-wise ops onnxruntime fuses into a convolution.
        while m is not None and m.op_type in ("Clip", "Relu", "Add", "Mul", "Sigmoid"):
            m = prod.get(m.input[0]) if m.input else None
        if m is not None and m.op_type != "Conv":
            m = None
        if m is None:
            kinds[out] = n.op_type
            continue
        group = next((a.i for a in m.attribute if a.name == "group"), 1)
        w = init[m.input[1]].dims
        if group > 1:
            kinds[out] = f"Conv depthwise {w[2]}x{w[3]}"
        elif w[2] == 1 and w[3] == 1:
            kinds[out] = "Conv pointwise 1x1"
        else:
            kinds[out] = f"Conv {w[2]}x{w[3]}"
    return kinds


def session(model: str, threads: int, profile_prefix: str | None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/efficientnet_lite0_pooled.onnx")
    ap.add_argument("--input", help="float32 .npy of the model's input shape")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    s = session(a.model, a.threads, None)
    inp = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    if a.input:
        x = np.load(a.input).astype(np.float32).reshape(shape)
    else:
        x = np.random.default_rng(0).uniform(-2, 2, size=shape).astype(np.float32)
    feed = {inp.name: x}
    t = time.perf_counter()
    while time.perf_counter() - t < 1.0:
        s.run(None, feed)
    times = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < a.seconds:
        t = time.perf_counter_ns()
        s.run(None, feed)
        times.append((time.perf_counter_ns() - t) / 1e6)
    elapsed = time.perf_counter() - t0
    times.sort()
    at = lambda q: times[round((len(times) - 1) * q)]
    r = {
        "model": a.model,
        "engine": f"onnxruntime {ort.__version__}",
        "threads": a.threads,
        "frames": len(times),
        "seconds": elapsed,
        "fps": len(times) / elapsed,
        "backbone_ms_median": at(0.5),
        "backbone_ms_p99": at(0.99),
        "backbone_ms_min": times[0],
    }
    if a.profile:
        kinds = conv_kinds(a.model)
        with tempfile.TemporaryDirectory() as d:
            ps = session(a.model, a.threads, os.path.join(d, "ort"))
            n = 0
            t0 = time.perf_counter()
            while n < 3 or time.perf_counter() - t0 < min(a.seconds, 10.0):
                ps.run(None, feed)
                n += 1
            events = json.load(open(ps.end_profiling()))
        per = collections.defaultdict(lambda: [0, 0.0])
        nodes = collections.defaultdict(set)
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            name = e["name"][: -len("_kernel_time")]
            out = name.replace("_nchwc", "")
            kind = kinds.get(out, e["args"].get("op_name", "?"))
            per[kind][1] += e["dur"] / 1e3 / n
            nodes[kind].add(name)
        total = sum(v[1] for v in per.values())
        r["profile"] = sorted(
            (
                {"op": k, "nodes": len(nodes[k]), "ms_per_frame": v[1], "share": v[1] / total}
                for k, v in per.items()
            ),
            key=lambda o: -o["ms_per_frame"],
        )
    if a.json:
        print(json.dumps(r))
    else:
        print(
            f"{r['engine']}, {a.threads} thread(s): {r['fps']:.2f} frames/s | backbone median "
            f"{r['backbone_ms_median']:.2f} ms, p99 {r['backbone_ms_p99']:.2f}, min "
            f"{r['backbone_ms_min']:.2f} | {r['frames']} frames"
        )
        for o in r.get("profile", []):
            print(f"  {o['op']:<26}{o['nodes']:>5}{o['ms_per_frame']:>10.3f} ms {100 * o['share']:>6.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
