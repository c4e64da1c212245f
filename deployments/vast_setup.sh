#!/usr/bin/env bash
# gpuops vast.ai on-start set-up (runbook 004 §5): fail fast, check the model before the app starts.
#
# `gpuops provision-vast` sends this file as the instance's on-start script and sets its parameters in the
# instance's environment. Every failure prints one line starting "GPUOPS_SETUP FATAL:" saying what and the
# fix, and exits non-zero; success prints "GPUOPS_SETUP_COMPLETE" only once the app answers its health path.
# The flow reads both from the instance's log.
#
# Parameters (environment):
#   MODEL_DIR       where the model must be after the fetch (required)
#   MODEL_MIN_MB    the smallest believable size of MODEL_DIR in MB (required): catches a partial download
#   MODEL_FETCH     a command that puts the model into MODEL_DIR, e.g.
#                   "hf download org/name --local-dir /models/name"; empty: the image already holds it
#   APP_CMD         the command that starts the app, listening on $APP_PORT (required)
#   APP_PORT        the container port the app listens on (default 8000, the port gpuops maps with -p);
#                   $PORT wins where the platform sets it (gpuops' stand-in does: its emulated host's port)
#   HEALTH_PATH     the app's health path (default /healthz)
#   HEALTH_WAIT_S   how long the app may take to answer it (default 300)
set -euo pipefail

fatal() { echo "GPUOPS_SETUP FATAL: $*" >&2; exit 1; }
phase() { echo "GPUOPS_SETUP phase $*"; }

MODEL_DIR="${MODEL_DIR:-}"
MODEL_MIN_MB="${MODEL_MIN_MB:-}"
MODEL_FETCH="${MODEL_FETCH:-}"
APP_CMD="${APP_CMD:-}"
APP_PORT="${PORT:-${APP_PORT:-8000}}"
HEALTH_PATH="${HEALTH_PATH:-/healthz}"
HEALTH_WAIT_S="${HEALTH_WAIT_S:-300}"
export APP_PORT

[ -n "$MODEL_DIR" ] || fatal "MODEL_DIR is not set: pass the model directory (--model-dir)."
[[ "$MODEL_MIN_MB" =~ ^[0-9]+$ ]] || fatal "MODEL_MIN_MB '$MODEL_MIN_MB' is not a whole number of MB (--model-min-mb)."
[ -n "$APP_CMD" ] || fatal "APP_CMD is not set: pass the command that starts the app (--app-command)."
[[ "$HEALTH_WAIT_S" =~ ^[0-9]+$ ]] || fatal "HEALTH_WAIT_S '$HEALTH_WAIT_S' is not a whole number of seconds."

phase "1/4: GPU"
command -v nvidia-smi >/dev/null || fatal "nvidia-smi not found: this host has no NVIDIA driver; choose another offer."
reading="$(nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits)" \
  || fatal "nvidia-smi failed: the driver is not usable on this host; choose another offer."
[ -n "$reading" ] || fatal "nvidia-smi lists no GPU; choose another offer."
echo "GPUOPS_SETUP gpu: ${reading//$'\n'/; }"

phase "2/4: model"
if [ -n "$MODEL_FETCH" ]; then
  bash -c "$MODEL_FETCH" || fatal "the model fetch failed (exit $?): read the lines above; check the model id, a token, the network."
fi
[ -d "$MODEL_DIR" ] || fatal "model directory $MODEL_DIR is missing after the fetch: check MODEL_FETCH writes into MODEL_DIR."
files="$(find "$MODEL_DIR" -type f | wc -l)"
[ "$files" -gt 0 ] || fatal "model directory $MODEL_DIR is empty: the fetch wrote nothing."
size_mb="$(du -sm "$MODEL_DIR" | cut -f1)"
[ "$size_mb" -ge "$MODEL_MIN_MB" ] \
  || fatal "model in $MODEL_DIR is ${size_mb} MB, below ${MODEL_MIN_MB} MB: the download is incomplete; fetch it again."
echo "GPUOPS_SETUP model: $MODEL_DIR, $files files, ${size_mb} MB"

phase "3/4: app"
bash -c "$APP_CMD" &
app_pid=$!

answers() {
  local url="http://127.0.0.1:${APP_PORT}${HEALTH_PATH}"
  if command -v curl >/dev/null; then
    curl -sf -o /dev/null --max-time 2 "$url"
  else
    python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url" 2>/dev/null
  fi
}

phase "4/4: health"
deadline=$((SECONDS + HEALTH_WAIT_S))
until answers; do
  kill -0 "$app_pid" 2>/dev/null || { wait "$app_pid" && code=0 || code=$?; fatal "the app exited (status $code) before answering $HEALTH_PATH: read its lines above."; }
  [ "$SECONDS" -lt "$deadline" ] || fatal "the app did not answer $HEALTH_PATH on port $APP_PORT within ${HEALTH_WAIT_S}s."
  sleep 0.5
done
echo "GPUOPS_SETUP_COMPLETE"

# Keep the script as long as the app: its exit is logged as a failure.
wait "$app_pid" && code=0 || code=$?
fatal "the app exited (status $code) after set-up: read its lines above."
