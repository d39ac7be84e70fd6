#!/usr/bin/env bash
# vigil's pipeline and the usual Python route (onnxruntime + numpy DFKDE) on the same
# images, back to back in one run on one machine, and the frames/s ratio.
#   scripts/bench_side_by_side.sh DIR [SECONDS]
# Needs the Python venv of scripts/requirements.txt at .venv (see scripts/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: $0 DIR [SECONDS]}"
secs="${2:-20}"
py=".venv/bin/python"
[ -x "$py" ] || { echo "no .venv: python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt" >&2; exit 1; }
# PROFILE=release for a release build (slow to build cold); the default dev profile
# already compiles every dependency at opt-level 3.
profile="${PROFILE:-dev}"
cargo build --quiet --profile "$profile"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
vigil_json=$("${CARGO_TARGET_DIR:-target}/$dir/vigil" bench --data "$data" --workers 1,2 --seconds "$secs" --json)
py1=$("$py" scripts/bench_python_route.py --data "$data" --threads 1 --seconds "$secs" --json)
py2=$("$py" scripts/bench_python_route.py --data "$data" --threads 2 --ort-spin off --seconds "$secs" --json)
VIGIL="$vigil_json" PY1="$py1" PY2="$py2" "$py" - <<'PYEOF'
import json, os
rows = [json.loads(l) for l in os.environ["VIGIL"].splitlines() if l.strip()]
p1, p2 = json.loads(os.environ["PY1"]), json.loads(os.environ["PY2"])
print(f"{'route':<34}{'frames/s':>10}{'backbone ms':>13}")
for r in rows:
    print(f"{'vigil, %d worker(s)' % r['workers']:<34}{r['fps']:>10.2f}{r['backbone']['median_ms']:>13.2f}")
for p in (p1, p2):
    print(f"{'onnxruntime route, %d thread(s)' % p['threads']:<34}{p['fps']:>10.2f}{p['stages']['backbone']['median_ms']:>13.2f}")
best_v = max(r["fps"] for r in rows)
best_p = max(p1["fps"], p2["fps"])
print(f"ratio vigil / onnxruntime route (best of each): {best_v / best_p:.2f}")
PYEOF
