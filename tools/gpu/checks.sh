#!/usr/bin/env bash
# This round's serving checks on the GPU host, in one device call (run.sh's `checks` part):
#   bash checks.sh BIN_DIR LOGDIR
# 1. Alone on the GPU: every documented deployment command line starts `serve` (or stops
#    naming the flag it cannot honour), model ids resolved offline from a prepared hub cache
#    (seed_commands_check.py).
# 2. Then side by side, each server with its own share of the GPU's memory (the engine's
#    --gpu-memory-utilization is a device-wide target, so each later server is given the
#    earlier ones' share plus its own):
#    - soak.py: SOAK_MINUTES (default 8) of random traffic against one server (share 0.25);
#    - `serve PaddlePaddle/PaddleOCR-VL` from the hub cache (share 0.25) with the pipeline's
#      traffic replayed by pipeline_replay.py (2000 regions, 200 in flight), then
#      overload_check.sh on a fresh server (share 0.25);
#    - load_elsewhere_check.py: transformers loads a synth-model directory as it is.
# Prints a PASS/FAIL table last; full logs in LOGDIR.
set -uo pipefail
bin=${1:?usage: checks.sh BIN_DIR LOGDIR}
logs=${2:?usage: checks.sh BIN_DIR LOGDIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=${OCRVL_REPO_DIR:-$(cd "$here/../../.." && pwd)}
synth=${OCRVL_SYNTHETIC_DIR:-$HOME/.cache/ocrvl/synthetic/paddleocr-vl-0.9b-seed0}
hf=/tmp/ocrvl-hf
mkdir -p "$logs"
rows=()
row() { rows+=("$(printf '| %-26s | %-4s | %s |' "$1" "$2" "${3:0:150}")"); }
verdict() { # name rc logfile: PASS/FAIL from the exit code, the log's last line as detail
    local r=FAIL; [ "$2" = 0 ] && r=PASS
    row "$1" "$r" "$(grep -v '^\s*$' "$3" 2>/dev/null | tail -n 1)"
}

# The synthetic model (a fresh machine has none) and the hub cache that holds it.
[ -e "$synth/model.safetensors" ] || "$bin/bench" --synthetic-dir "$synth" --workload none --no-model-steps \
    > "$logs/synth.log" 2>&1
bash "$here/prepare_hf_cache.sh" "$synth" "$hf" PaddlePaddle/PaddleOCR-VL > "$logs/hf_cache.log" 2>&1

# 1. Seed command lines, one at a time, alone on the GPU (SEEDS=1; run.sh's `seeds` part
#    runs them on their own when the soak needs the whole call).
if [ "${SEEDS:-1}" = 1 ]; then
    timeout 240 python3 "$here/seed_commands_check.py" --serve "$bin/serve" \
        --fixture "$repo/tests/fixtures/command_lines.txt" --model-dir "$synth" --hf-home "$hf" --logdir "$logs" \
        > "$logs/seed_commands.out" 2>&1
    rc=$?
    while IFS= read -r line; do
        case "$line" in PASS*|FAIL*) row "$(echo "$line" | cut -d: -f1 | cut -d' ' -f2-)" "${line%% *}" "${line#*: }";; esac
    done < "$logs/seed_commands.out"
    [ "$rc" = 0 ] || row "seed commands" FAIL "exit $rc; see seed_commands.out"
fi

if [ "${SEEDS_ONLY:-0}" = 1 ]; then
    printf '| %-26s | %-4s | %s |\n' check ok detail
    printf '%s\n' "${rows[@]}"
    exit 0
fi

# The openai client for the replay (the host has no network): from the bundle's wheels.
if ! python3 -c 'import openai' 2>/dev/null && [ -d "$here/../wheels" ]; then
    python3 -m pip install -q --no-index --find-links "$here/../wheels" --target /tmp/ocrvl-py openai \
        > "$logs/pip.log" 2>&1 && export PYTHONPATH="/tmp/ocrvl-py${PYTHONPATH:+:$PYTHONPATH}"
fi

# 2a. Soak, in the background.
soak_min=${SOAK_MINUTES:-8}
timeout $(( ${soak_min%.*} * 60 + 90 )) python3 "$here/soak.py" --serve "$bin/serve" --port 18400 --minutes "$soak_min" \
    --gpu-memory-utilization 0.25 --warmup-s 60 --logdir "$logs" > "$logs/soak.out" 2>&1 &
soak_pid=$!
# Let the soak's server take its share first.
for _ in $(seq 1 120); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18400/health)" = 200 ] && break
    sleep 0.5
done

# 2b. The pipeline's traffic against `serve PaddlePaddle/PaddleOCR-VL` from the hub cache.
HF_HOME=$hf HF_HUB_OFFLINE=1 "$bin/serve" PaddlePaddle/PaddleOCR-VL --host 127.0.0.1 --port 18200 \
    --gpu-memory-utilization 0.5 --max-model-len 8192 > "$logs/serve_replay.log" 2>&1 &
serve_pid=$!
ready=0
for _ in $(seq 1 240); do
    kill -0 "$serve_pid" 2>/dev/null || break
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18200/health)" = 200 ] && { ready=1; break; }
    sleep 0.5
done
if [ "$ready" = 1 ]; then
    row "serve ORG/NAME from cache" PASS "$(grep -m1 -iE 'model|resolv' "$logs/serve_replay.log" | cut -c1-120)"
    # load_elsewhere (transformers, small) beside the replay.
    ( "$bin/synth-model" --tiny --out /tmp/ocrvl-v1 && "$bin/synth-model" --tiny --version 1.5 --out /tmp/ocrvl-v15 \
        && timeout 200 python3 "$here/load_elsewhere_check.py" /tmp/ocrvl-v1 /tmp/ocrvl-v15 "$synth" ) \
        > "$logs/load_elsewhere.out" 2>&1 &
    le_pid=$!
    timeout "${REPLAY_TIMEOUT:-240}" python3 "$here/pipeline_replay.py" --url http://127.0.0.1:18200/v1 -n "${REPLAY_N:-2000}" \
        --concurrency 200 --max-completion-tokens 64 > "$logs/pipeline_replay.out" 2>&1
    verdict "pipeline replay" $? "$logs/pipeline_replay.out"
    wait "$le_pid"; verdict "load elsewhere (transformers)" $? "$logs/load_elsewhere.out"
else
    row "serve ORG/NAME from cache" FAIL "$(tail -n 2 "$logs/serve_replay.log" | tr '\n' ' ')"
fi
kill -TERM "$serve_pid" 2>/dev/null; wait "$serve_pid" 2>/dev/null

# 2c. Overload on a fresh server (its own RSS is measured).
GPU_UTIL=0.5 PORT=18100 timeout "${OVERLOAD_TIMEOUT:-280}" bash "$here/overload_check.sh" "$bin" "$logs" > "$logs/overload.out" 2>&1
rc=$?
while IFS= read -r line; do
    case "$line" in PASS*|FAIL*) row "overload: $(echo "$line" | cut -d' ' -f2 | tr -d :)" "${line%% *}" "$(echo "$line" | cut -d' ' -f3-)";; esac
done < "$logs/overload.out"
[ "$rc" = 0 ] || row "overload_check.sh" FAIL "exit $rc"

wait "$soak_pid"; rc=$?
grep -E '^\|' "$logs/soak.out" > "$logs/soak_table.txt" 2>/dev/null
verdict "soak ($soak_min min)" "$rc" "$logs/soak.out"

echo
cat "$logs/soak_table.txt" 2>/dev/null
printf '| %-26s | %-4s | %s |\n' check ok detail
printf '%s\n' "${rows[@]}"
