#!/usr/bin/env bash
# Runs the GPU bundle on the GPU host: every test executable with --include-ignored, the
# criterion benches, then the bench binary. Full logs go to LOGDIR (default $OUT, else
# ./logs); a short summary table is printed last. It writes 4 files (tests.log, benches.log,
# bench.log, bench.json), since the device tool brings back 8 at most.
#   bash target/gpu-bundle/run.sh [LOGDIR]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
logs=${1:-${OUT:-$here/logs}}
mkdir -p "$logs"
rows=()
# Tests that read committed fixtures find them in the repository copy this bundle sits in.
export OCRVL_REPO_DIR=$(cd "$here/../.." && pwd)

# The executables travel as one solid xz archive: each links the same kernel fatbins, which
# the archive stores once (about 300 MB of executables become under 10 MB).
bin="$here/bin"
if [ -e "$here/bin.tar.xz" ]; then
    unpacked=$(mktemp -d)
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$here/bin.tar.xz" "$unpacked"
    bin="$unpacked/bin"
fi

run_step() { # name logfile command...
    local name=$1 log=$2; shift 2
    local t0=$(date +%s.%N)
    echo "=== $name: $*" >> "$log"
    "$@" >> "$log" 2>&1
    local rc=$?
    local secs=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
    local what=$(grep -E '^test result:' "$log" | tail -n 1)
    rows+=("$(printf '| %-28s | %3s | %6s s | %s |' "$name" "$rc" "$secs" "${what:-}")")
}

{ nvidia-smi; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv; } > "$logs/tests.log" 2>&1

for t in "$bin"/test-*; do
    # One thread: GPU tests share one device and time nothing, but parallel runs would
    # interleave their memory use.
    run_step "$(basename "$t")" "$logs/tests.log" "$t" --include-ignored --test-threads=1
done
for b in "$bin"/bench-*; do
    run_step "$(basename "$b")" "$logs/benches.log" "$b" --bench
done
run_step "bench (binary)" "$logs/bench.log" "$bin/bench" --json "$logs/bench.json"
if [ -e "$here/compare_full_model.py" ]; then
    run_step "compare_full_model.py" "$logs/bench.log" python3 "$here/compare_full_model.py" --ocrvl "$bin/ocrvl-logits"
fi
for py in "$here"/tools/*.py; do
    [ -e "$py" ] || continue
    run_step "$(basename "$py")" "$logs/benches.log" python3 "$py"
done

echo
echo "== failures (first lines) =="
grep -hE '^(test .* FAILED|failures:|---- |thread .* panicked)' "$logs/tests.log" | head -n 20
echo
echo "== benches =="
grep -hE '(TFLOP/s|GB/s)' "$logs/benches.log" 2>/dev/null | grep -vE '^\s*(thrpt|time):' | head -n 80
grep -E '^(\||full-size)' "$logs/bench.log"
echo
echo "== summary =="
printf '| %-28s | %3s | %8s | %s |\n' step rc time result
for r in "${rows[@]}"; do echo "$r"; done
