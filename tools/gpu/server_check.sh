#!/usr/bin/env bash
# End-to-end check of the `serve` binary on the GPU host (no network needed):
#   bash server_check.sh BIN_DIR [LOGDIR]
# BIN_DIR holds the release `serve`. It starts serve on the full-size synthetic model in the
# background (written once to ~/.cache/ocrvl/synthetic, or $OCRVL_SYNTHETIC_DIR), waits for
# /health, runs openai_client_check.py (beside this script) and curl examples, then sends
# SIGTERM while a long streamed request runs and checks that the server exits within its
# --shutdown-timeout bound. Prints a short table; exits 1 if a step failed. Writes two files
# to LOGDIR (default $OUT, else /tmp): serve.log and server_check.log (responses, metrics).
set -uo pipefail
bin=${1:?usage: server_check.sh BIN_DIR [LOGDIR]}
logs=${2:-${OUT:-/tmp}}
here=$(cd "$(dirname "$0")" && pwd)
port=${PORT:-18000}
mport=$((port + 1))
grace=10
base="http://127.0.0.1:$port"
log="$logs/server_check.log"
tmp=$(mktemp -d)
mkdir -p "$logs"
: > "$log"
rows=()
failed=0
row() { # step status detail
    rows+=("$(printf '| %-22s | %-4s | %s |' "$1" "$2" "$3")")
    [ "$2" = FAIL ] && failed=1
    return 0
}
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }

t0=$(now)
# No prefix caching: the openai check compares a streamed greedy answer with the same request
# answered whole, and a cached prefix would split the prefill differently, which on random
# weights (near-tied logits) can flip a token.
"$bin/serve" --host 127.0.0.1 --port "$port" --metrics-port "$mport" --max-model-len 4096 \
    --max-num-seqs 8 --gpu-memory-utilization 0.5 --shutdown-timeout "$grace" --no-enable-prefix-caching \
    > "$logs/serve.log" 2>&1 &
pid=$!

# Ready: the first run writes the 1.9 GB synthetic model, so allow minutes.
ready=0
for _ in $(seq 1 1200); do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    # serve keeps running after a failed start-up (so /health can say why): stop waiting.
    if grep -q 'START-UP FAILED' "$logs/serve.log"; then break; fi
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health")" = 200 ]; then ready=1; break; fi
    sleep 0.5
done
if [ "$ready" = 1 ]; then
    row "start to /health 200" PASS "$(since "$t0") s ($(grep -m1 'serve: ready' "$logs/serve.log" | cut -c1-80))"
else
    row "start to /health 200" FAIL "not ready; see serve.log: $(tail -n 2 "$logs/serve.log" | tr '\n' ' ' | cut -c1-120)"
    kill -KILL "$pid" 2>/dev/null
    printf '| %-22s | %-4s | %s |\n' step ok detail; printf '%s\n' "${rows[@]}"
    exit 1
fi

# The openai client: installed from the bundle's wheels (../wheels) when the host lacks it.
if ! python3 -c 'import openai' 2>/dev/null && [ -d "$here/../wheels" ]; then
    python3 -m pip install -q --no-index --find-links "$here/../wheels" --target "$tmp/py" openai >> "$log" 2>&1 \
        && export PYTHONPATH="$tmp/py${PYTHONPATH:+:$PYTHONPATH}"
fi
out=$(python3 "$here/openai_client_check.py" --base-url "$base/v1" 2>&1)
echo "$out" >> "$log"
while IFS= read -r line; do
    case "$line" in
        PASS*|FAIL*|SKIP*) row "openai: $(echo "$line" | cut -d' ' -f2 | tr -d :)" "${line%% *}" "$(echo "$line" | cut -d' ' -f3- | cut -c1-100)";;
    esac
done <<< "$out"

# curl, as the README shows it.
uri=$(python3 "$here/openai_client_check.py" --print-data-uri)
model=$(curl -s "$base/v1/models" | python3 -c "import json,sys; print(json.load(sys.stdin)['data'][0]['id'])")
body=$(printf '{"model": "%s", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "%s"}}, {"type": "text", "text": "OCR:"}]}], "temperature": 0, "max_tokens": 16}' "$model" "$uri")
code=$(curl -s -o "$tmp/chat.json" -w '%{http_code}' "$base/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")
cat "$tmp/chat.json" >> "$log"; echo >> "$log"
[ "$code" = 200 ] && row "curl chat" PASS "$(cut -c1-100 "$tmp/chat.json")" || row "curl chat" FAIL "HTTP $code"
sbody=${body%\}}', "stream": true}'
chunks=$(curl -sN "$base/v1/chat/completions" -H 'Content-Type: application/json' -d "$sbody" | tee -a "$log" | grep -c '^data: ')
last=$(tail -n 3 "$log" | grep '^data: ' | tail -n 1)
[ "$last" = "data: [DONE]" ] && row "curl stream" PASS "$chunks data lines, ends with [DONE]" || row "curl stream" FAIL "$chunks data lines, last: ${last:0:60}"
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/v1/chat/completions" -H 'Content-Type: application/json' -d '{"messages": [{"role": "user", "content": "x"}], "n": 2}')
[ "$code" = 400 ] && row "curl n=2" PASS "400" || row "curl n=2" FAIL "HTTP $code"
m=$(curl -s "http://127.0.0.1:$mport/metrics")
echo "$m" >> "$log"
gen=$(echo "$m" | awk '$1 == "ocrvl_generation_tokens_total" {print $2}')
ttft=$(echo "$m" | awk '$1 == "ocrvl_time_to_first_token_seconds_count" {print $2}')
[ -n "$gen" ] && [ "${gen%.*}" -gt 0 ] && row "metrics port" PASS "generation tokens $gen, TTFT samples $ttft" || row "metrics port" FAIL "no generation tokens counted"

# SIGTERM with a long request running: it must end (finished or aborted) and the server exit
# within the bound.
long=${body/'"max_tokens": 16'/'"max_tokens": 3000'}
long=${long%\}}', "stream": true}'
curl -sN "$base/v1/chat/completions" -H 'Content-Type: application/json' -d "$long" > "$tmp/long.txt" 2>&1 &
cpid=$!
sleep 1
ts=$(now)
kill -TERM "$pid"
exited=0
for _ in $(seq 1 $(( (grace + 10) * 10 ))); do
    if ! kill -0 "$pid" 2>/dev/null; then exited=1; break; fi
    sleep 0.1
done
took=$(since "$ts")
if [ "$exited" = 1 ]; then
    wait "$pid"; rc=$?
    finish=$(grep -o '"finish_reason":"[a-z]*"' "$tmp/long.txt" | tail -n 1)
    [ "$rc" = 0 ] && row "SIGTERM exit" PASS "exit $rc after $took s (bound $grace s + 5); long stream: ${finish:-none}" \
        || row "SIGTERM exit" FAIL "exit status $rc after $took s"
else
    row "SIGTERM exit" FAIL "still running after $took s"
    kill -KILL "$pid" 2>/dev/null
fi
wait "$cpid" 2>/dev/null
{ echo "=== long stream during SIGTERM (last lines)"; tail -n 4 "$tmp/long.txt"; } >> "$log"
rm -rf "$tmp"

printf '| %-22s | %-4s | %s |\n' step ok detail
printf '%s\n' "${rows[@]}"
exit $failed
