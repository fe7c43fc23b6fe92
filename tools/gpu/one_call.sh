#!/usr/bin/env bash
# The round's GPU checks in one device call, for when the device tool lends a machine once:
#   bash tools/gpu/one_call.sh BUNDLE_DIR LOGDIR
# 1. every GPU test (test-gpu, TEST_SKIP left out), 2. the seed command lines, 3. the serving
# checks (soak of SOAK_MINUTES, default 4, beside the pipeline replay and the overload check).
# Each part has its own time limit so the whole fits one 10-minute call; a short table last.
set -uo pipefail
bundle=${1:?usage: one_call.sh BUNDLE_DIR LOGDIR}
logs=${2:?usage: one_call.sh BUNDLE_DIR LOGDIR}
mkdir -p "$logs"
unpacked=$(mktemp -d)
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$bundle/bin.tar.xz" "$unpacked"
export OCRVL_REPO_DIR=$PWD OCRVL_FFI_BIN_DIR=$unpacked/bin
t0=$(date +%s)
timeout "${TESTS_TIMEOUT:-160}" "$unpacked/bin/test-gpu" --include-ignored --test-threads=1 \
    ${TEST_SKIP:+--skip "$TEST_SKIP"} > "$logs/test_gpu.log" 2>&1
echo "test-gpu rc=$? ($(( $(date +%s) - t0 )) s): $(grep -E '^test result:' "$logs/test_gpu.log" | tail -n 1)" >> "$logs/summary.txt"
t0=$(date +%s)
timeout "${SEEDS_TIMEOUT:-100}" bash "$bundle/run.sh" seeds "$logs" > "$logs/run_seeds.out" 2>&1
echo "seeds rc=$? ($(( $(date +%s) - t0 )) s)" >> "$logs/summary.txt"
t0=$(date +%s)
SOAK_MINUTES=${SOAK_MINUTES:-4} timeout "${CHECKS_TIMEOUT:-310}" bash "$bundle/run.sh" checks "$logs" > "$logs/run_checks.out" 2>&1
echo "checks rc=$? ($(( $(date +%s) - t0 )) s)" >> "$logs/summary.txt"
echo "== failed tests"; grep -E '^test .* FAILED|panicked' "$logs/test_gpu.log" | head -n 12
echo "== seeds"; tail -n 18 "$logs/run_seeds.out"
echo "== checks"; tail -n 26 "$logs/run_checks.out"
echo "== summary"; cat "$logs/summary.txt"
