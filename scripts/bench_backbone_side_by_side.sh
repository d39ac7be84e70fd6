#!/usr/bin/env bash
# tract (vigil bench --backbone-only) and onnxruntime on the same ONNX file and input tensor,
# interleaved round by round in one run, so the ratios survive a noisy machine:
#   scripts/bench_backbone_side_by_side.sh [MODEL] [ROUNDS] [SECONDS]
# defaults: models/efficientnet_lite0_pooled.onnx, 3 rounds, 5 s per measurement.
# Each round measures tract 1 thread, onnxruntime 1 thread, tract 2 instances, onnxruntime
# 2 intra-op threads. Prints medians over rounds and the ratios the speed issue tracks:
#   single-thread ms/frame tract / onnxruntime   (target <= 2, stretch <= 1.5)
#   tract throughput 2 instances / 1              (target >= 1.7)
# Needs the Python venv of scripts/requirements.txt at .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/efficientnet_lite0_pooled.onnx}"
rounds="${2:-3}"
secs="${3:-5}"
input="tests/fixtures/effnet_input.npy"
py=".venv/bin/python"
[ -x "$py" ] || { echo "no .venv: python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt" >&2; exit 1; }
# PROFILE=release for a release build; the default dev profile compiles every dependency
# and the kernels crate at opt-level 3.
profile="${PROFILE:-dev}"
exe=$(cargo build --quiet --profile "$profile" --bin vigil --message-format=json |
  "$py" -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "vigil" and m.get("executable"):
        print(m["executable"])')
# A private copy: another checkout sharing CARGO_TARGET_DIR may rebuild target/*/vigil meanwhile.
vigil=$(mktemp)
trap 'rm -f "$vigil"' EXIT
cp "$exe" "$vigil" && chmod +x "$vigil"
"$vigil" bench --help | grep -q -- --backbone-only || { echo "$exe is not this checkout's vigil" >&2; exit 1; }
# The fixture is EfficientNet's 224² input; other models get a fixed pseudo-random tensor.
in_args=()
if [ "$model" = models/efficientnet_lite0_pooled.onnx ]; then in_args=(--input "$input"); fi
lines=""
for r in $(seq "$rounds"); do
  for t in 1 2; do
    lines+="$("$vigil" bench --backbone-only --backbone "$model" "${in_args[@]}" --threads "$t" --seconds "$secs" --json)"$'\n'
    lines+="$("$py" scripts/bench_backbone_ort.py --model "$model" "${in_args[@]}" --threads "$t" --seconds "$secs" --json)"$'\n'
  done
done
LINES="$lines" "$py" - <<'PYEOF'
import json, os, statistics as st
rows = [json.loads(l) for l in os.environ["LINES"].splitlines() if l.strip()]
def pick(engine, t):
    return [r for r in rows if r["engine"].startswith(engine) and r["threads"] == t]
print(f"model: {rows[0]['model']}  ({len(rows) // 4} rounds)")
print(f"{'engine':<28}{'threads':>8}{'ms/frame':>10}{'frames/s':>10}")
med = {}
for engine in ("tract", "onnxruntime"):
    for t in (1, 2):
        rs = pick(engine, t)
        ms, fps = st.median(r["backbone_ms_median"] for r in rs), st.median(r["fps"] for r in rs)
        med[engine, t] = (ms, fps)
        print(f"{rs[0]['engine']:<28}{t:>8}{ms:>10.2f}{fps:>10.2f}")
# Ratios per round, then the median: both engines saw the same machine state.
n = len(pick("tract", 1))
single = st.median(pick("tract", 1)[i]["backbone_ms_median"] / pick("onnxruntime", 1)[i]["backbone_ms_median"] for i in range(n))
scale = st.median(pick("tract", 2)[i]["fps"] / pick("tract", 1)[i]["fps"] for i in range(n))
tput = st.median(pick("onnxruntime", 2)[i]["fps"] / pick("tract", 2)[i]["fps"] for i in range(n))
print(f"single-thread ms/frame, tract / onnxruntime: {single:.2f}x  (target <= 2, stretch <= 1.5)")
print(f"tract throughput, 2 instances / 1:           {scale:.2f}x  (target >= 1.7)")
print(f"2-thread throughput, onnxruntime / tract:    {tput:.2f}x")
print(json.dumps({"single_thread_ratio": single, "tract_scaling_2": scale, "two_thread_throughput_ratio": tput,
                  "medians": {f"{e}_{t}": {"ms": v[0], "fps": v[1]} for (e, t), v in med.items()}}))
PYEOF
