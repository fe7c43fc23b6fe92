#!/usr/bin/env bash
# Starts `serve` on the full-size synthetic model and runs overload_check.py (beside this
# script) against it with the server's PID, then stops the server:
#   bash overload_check.sh BIN_DIR [LOGDIR]
# BIN_DIR holds the release `serve`. GPU_UTIL (default 0.5) is its --gpu-memory-utilization. 64 sequences, so --max-pending-requests is its default
# 4 x 64 = 256. Writes serve_overload.log and overload_check.log to LOGDIR (default $OUT, else
# /tmp); prints the PASS/FAIL lines; exits 1 if a check failed. About 2-4 minutes (the first
# run on a host also writes the 1.9 GB synthetic model).
set -uo pipefail
bin=${1:?usage: overload_check.sh BIN_DIR [LOGDIR]}
logs=${2:-${OUT:-/tmp}}
here=$(cd "$(dirname "$0")" && pwd)
port=${PORT:-18100}
mport=$((port + 1))
base="http://127.0.0.1:$port"
mkdir -p "$logs"

"$bin/serve" --host 127.0.0.1 --port "$port" --metrics-port "$mport" --max-model-len 4096 \
    --max-num-seqs 64 --gpu-memory-utilization "${GPU_UTIL:-0.5}" --shutdown-timeout 5 \
    > "$logs/serve_overload.log" 2>&1 &
pid=$!
ready=0
for _ in $(seq 1 1200); do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    if grep -q 'START-UP FAILED' "$logs/serve_overload.log"; then break; fi
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health")" = 200 ]; then ready=1; break; fi
    sleep 0.5
done
if [ "$ready" != 1 ]; then
    echo "FAIL start: serve not ready; see $logs/serve_overload.log: $(tail -n 2 "$logs/serve_overload.log" | tr '\n' ' ')"
    kill -KILL "$pid" 2>/dev/null
    exit 1
fi
python3 "$here/overload_check.py" --base-url "$base" --metrics-url "http://127.0.0.1:$mport" --pid "$pid" \
    2>&1 | tee "$logs/overload_check.log"
rc=${PIPESTATUS[0]}
# The server must still be alive and healthy after all of it.
alive=$(curl -s -o /dev/null -w '%{http_code}' "$base/health")
echo "health after the checks: $alive" | tee -a "$logs/overload_check.log"
grep -E 'VmHWM|VmRSS' "/proc/$pid/status" | tee -a "$logs/overload_check.log"
kill -TERM "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ "$alive" = 200 ] || rc=1
exit "$rc"
