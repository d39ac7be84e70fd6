#!/usr/bin/env bash
# Memory soak: `vigil run` on looping folder sources against a local mosquitto, sampling the
# daemon's RSS; prints a CSV and a summary (first vs last quarter). Not part of CI (hours).
#   usage: scripts/soak.sh [MINUTES=60] [CAMERAS=2] [WORKERS=2] [FPS=5]
#   VIGIL_SHARED  reference data (images of ../shared/data/magnetic_tile)
#   VIGIL_BIN     binary to run (default: cargo build's, via $CARGO_TARGET_DIR or target/)
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${1:-60}; CAMS=${2:-2}; WORKERS=${3:-2}; FPS=${4:-5}
SHARED="${VIGIL_SHARED:-$(cd .. && pwd)/shared}"
BIN="${VIGIL_BIN:-${CARGO_TARGET_DIR:-target}/debug/vigil}"
OUT=$(mktemp -d /tmp/vigil-soak.XXXX)
PORT=$((20000 + RANDOM % 20000))
mosquitto -p "$PORT" >"$OUT/mosquitto.log" 2>&1 & MQ=$!
trap 'kill $MQ ${VP:-} 2>/dev/null || true' EXIT
data="$SHARED/data/magnetic_tile"
# The whole test set (normal and defective) as one folder: events open and close all along.
mkdir -p "$OUT/frames"
for f in "$data"/test/*/*; do ln -s "$f" "$OUT/frames/$(basename "$(dirname "$f")")_$(basename "$f")"; done
"$BIN" fit --train "$data/train/good" --out "$OUT/model.safetensors" >/dev/null
{
  printf 'node = "soak"\nstate_dir = "%s/state"\nruntime_dir = "%s/run"\n' "$OUT" "$OUT"
  printf '[inference]\nbackbone = "models/efficientnet_lite0_pooled.onnx"\nworkers = %d\n' "$WORKERS"
  printf '[mqtt]\nurl = "mqtt://127.0.0.1:%d"\n' "$PORT"
  for i in $(seq "$CAMS"); do
    printf '[[camera]]\nid = "cam%d"\nmodel = "%s/model.safetensors"\n' "$i" "$OUT"
    printf '[camera.source]\ntype = "folder"\npath = "%s/frames"\nfps = %s\nloop = true\n' "$OUT" "$FPS"
  done
} >"$OUT/vigil.toml"
MALLOC_ARENA_MAX=2 VIGIL_LOG=warn "$BIN" run --config "$OUT/vigil.toml" 2>"$OUT/vigil.log" & VP=$!
echo "soak: $MIN min, $CAMS cameras × $FPS fps, $WORKERS workers; files in $OUT" >&2
# RSS split as the kernel counts it: anonymous (heap, the allocator's cached blocks, stacks)
# and file-backed (the binary's code and read-only data, paged in as code paths first run).
echo "t_s,rss_kb,anon_kb,file_kb" >"$OUT/rss.csv"
end=$((SECONDS + MIN * 60))
while [ $SECONDS -lt $end ]; do
  kill -0 $VP 2>/dev/null || { echo "vigil died: $(tail -5 "$OUT/vigil.log")" >&2; exit 1; }
  echo "$SECONDS,$(awk '/^(VmRSS|RssAnon|RssFile):/ {v[$1] = $2} END {print v["VmRSS:"] "," v["RssAnon:"] "," v["RssFile:"]}' /proc/$VP/status)" >>"$OUT/rss.csv"
  sleep 30
done
# Frames really flowed: every camera's retained health counts scored frames.
mosquitto_sub -p "$PORT" -t "vigil/soak/+/health" -C "$CAMS" -W 10 >"$OUT/health.json"
python3 - "$OUT/health.json" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    h = json.loads(line)
    print(f"{h['camera']}: {h['state']}, scored {h['frames_scored']}, dropped {h['dropped_frames']}")
    assert h["frames_scored"] > 0, "no frame scored: the soak measured nothing"
PY
python3 - "$OUT/rss.csv" <<'PY'
import csv, sys
rows = [tuple(int(v) for v in r) for r in list(csv.reader(open(sys.argv[1])))[1:]]
q = max(1, len(rows) // 4)
for col, name in ((1, "RSS"), (2, "anon"), (3, "file")):
    first = [r[col] for r in rows[q:2 * q]] or [rows[0][col]]   # skip warm-up quarter
    last = [r[col] for r in rows[-q:]]
    print(f"samples {len(rows)}, {name} min {min(r[col] for r in rows)/1024:.1f} MB, "
          f"max {max(r[col] for r in rows)/1024:.1f} MB, 2nd-quarter mean "
          f"{sum(first)/len(first)/1024:.1f} MB, last-quarter mean {sum(last)/len(last)/1024:.1f} MB")
PY
