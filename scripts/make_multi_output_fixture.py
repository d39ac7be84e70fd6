#!/usr/bin/env python3
"""Write the multi-output / multi-input ONNX fixtures in tests/fixtures/.

Usage (repository root)::

    .venv/bin/python scripts/make_multi_output_fixture.py [--out tests/fixtures]

Files written:

* ``multi_output.onnx``: tiny deterministic CNN (``torch.manual_seed(0)``), opset 17,
  TorchScript exporter (``dynamo=False``), one input ``input`` ``[N,3,32,40]`` (symbolic
  batch ``N``, non-square on purpose) and TWO outputs, in this order:

  - ``stage``  ``[N,8,16,20]``: intermediate feature map (output of the BatchNorm, which is
    also consumed further down the network),
  - ``pooled`` ``[N,16]``: global average pool + flatten of the last conv (+ReLU).

  Network::

      Conv 3->8 3x3 s1 p1, ReLU                              [N, 8,32,40]
      depthwise Conv 8->8 3x3 s2 p1 groups=8, ReLU           [N, 8,16,20]
      BatchNorm2d(8) (eval, non-trivial running stats)     -> stage
      Conv 8->16 3x3 s2 p1, ReLU                             [N,16, 8,10]
      Conv 16->16 1x1, ReLU                                  [N,16, 8,10]
      GlobalAveragePool, Flatten                           -> pooled [N,16]

  The BatchNorm sits after a ReLU, so the exporter cannot fold it into a Conv: the graph keeps
  a real ``BatchNormalization`` node.

* ``multi_output_input.npy``: ``np.random.default_rng(7).standard_normal((2,3,32,40))`` float32.
* ``multi_output_expected.npy``: ``(2, 24)`` float32; row i = concat(mean over HxW of
  ``stage[i]`` (8 values), ``pooled[i]`` (16 values)), from onnxruntime (CPU, 1 thread).
* ``two_inputs.onnx``: ``Add`` of two ``[1,3,8,8]`` float inputs ``a`` and ``b`` -> ``sum``
  (for testing that a single-input loader rejects it).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import nn

OPSET = 17
IN_SHAPE = (2, 3, 32, 40)
OUTPUT_NAMES = ["stage", "pooled"]


class MultiOutputNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=1, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(16, 16, 1)
        # Non-trivial BatchNorm parameters / running statistics.
        with torch.no_grad():
            self.bn.weight.copy_(torch.rand(8) + 0.5)
            self.bn.bias.copy_(torch.randn(8) * 0.2)
            self.bn.running_mean.copy_(torch.randn(8) * 0.3)
            self.bn.running_var.copy_(torch.rand(8) * 1.5 + 0.25)

    def forward(self, x: torch.Tensor):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.dw(x))
        stage = self.bn(x)
        y = torch.relu(self.conv3(stage))
        y = torch.relu(self.conv4(y))
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)
        return stage, pooled


def export_multi_output(path: Path) -> nn.Module:
    torch.manual_seed(0)
    model = MultiOutputNet().eval()
    dummy = torch.zeros(1, *IN_SHAPE[1:])
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
            input_names=["input"],
            output_names=OUTPUT_NAMES,
            dynamic_axes={"input": {0: "N"}, "stage": {0: "N"}, "pooled": {0: "N"}},
            keep_initializers_as_inputs=False,
        )
    return model


def make_two_inputs(path: Path) -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8])
    s = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "two_inputs", [a, b], [s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="make_multi_output_fixture.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures", type=Path)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # ---- multi-output model
    onnx_path = out / "multi_output.onnx"
    model = export_multi_output(onnx_path)
    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m, full_check=True)
    out_names = [o.name for o in m.graph.output]
    assert out_names == OUTPUT_NAMES, f"graph.output order is {out_names}, expected {OUTPUT_NAMES}"
    assert [i.name for i in m.graph.input] == ["input"], [i.name for i in m.graph.input]
    assert dims(m.graph.input[0]) == ["N", 3, 32, 40], dims(m.graph.input[0])
    ops = [n.op_type for n in m.graph.node]
    assert "BatchNormalization" in ops, ops
    assert any(n.op_type == "Conv" and any(a.name == "group" and a.i == 8 for a in n.attribute)
               for n in m.graph.node), "depthwise conv missing"

    # ---- input + onnxruntime reference
    x = np.random.default_rng(7).standard_normal(IN_SHAPE).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == OUTPUT_NAMES
    stage, pooled = sess.run(None, {"input": x})
    assert stage.shape == (2, 8, 16, 20), stage.shape
    assert pooled.shape == (2, 16), pooled.shape
    expected = np.concatenate([stage.mean(axis=(2, 3)), pooled], axis=1).astype(np.float32)
    assert expected.shape == (2, 24) and expected.dtype == np.float32

    # Cross-check against torch.
    with torch.no_grad():
        t_stage, t_pooled = model(torch.from_numpy(x))
    d_stage = float(np.abs(t_stage.numpy() - stage).max())
    d_pooled = float(np.abs(t_pooled.numpy() - pooled).max())
    assert d_stage < 1e-4 and d_pooled < 1e-4, (d_stage, d_pooled)

    np.save(out / "multi_output_input.npy", x)
    np.save(out / "multi_output_expected.npy", expected)

    # ---- two-input model
    two_path = out / "two_inputs.onnx"
    make_two_inputs(two_path)
    m2 = onnx.load(str(two_path))
    assert [i.name for i in m2.graph.input] == ["a", "b"]
    s2 = ort.InferenceSession(str(two_path), so, providers=["CPUExecutionProvider"])
    one = np.ones((1, 3, 8, 8), np.float32)
    assert np.array_equal(s2.run(None, {"a": one, "b": one})[0], one * 2)

    # ---- report
    print(f"multi_output.onnx: {onnx_path.stat().st_size} bytes, inputs "
          f"{[(i.name, dims(i)) for i in m.graph.input]}, outputs {[(o.name, dims(o)) for o in m.graph.output]}")
    print(f"  ops: {ops}")
    print(f"  stage {stage.shape}, stage range [{stage.min():.4f}, {stage.max():.4f}]; pooled {pooled.shape}")
    print(f"  onnxruntime vs torch max abs: stage {d_stage:.2e}, pooled {d_pooled:.2e}")
    for name in ("multi_output_input.npy", "multi_output_expected.npy", "two_inputs.onnx"):
        p = out / name
        extra = ""
        if p.suffix == ".npy":
            a = np.load(p)
            extra = f" {a.shape} {a.dtype}"
        print(f"{name}: {p.stat().st_size} bytes{extra}")
    print(f"expected[0,:5] = {expected[0, :5].tolist()}")


if __name__ == "__main__":
    main()
