#!/usr/bin/env bash
# Issue 14, item 6 on the GPU host: vLLM (the kit in ../shared/peers/vllm, already unpacked
# into /tmp/site by its install.sh) loads directories `synth-model` writes, as they are.
#   bash tools/gpu/vllm_load.sh LOGDIR DIR [DIR ...]
# Each DIR is a `synth-model --tiny [--version 1.5]` directory, written here or on the build
# machine and carried (the kit's parts leave no room for the bundle in the same call). Runs
# vllm_load_check.py on them (no fix_model_dir.py, no hf_overrides), prints its PASS/FAIL
# lines and exits as it does.
set -uo pipefail
logs=${1:?usage: vllm_load.sh LOGDIR DIR [DIR ...]}
shift
[ "$#" -gt 0 ] || { echo "usage: vllm_load.sh LOGDIR DIR [DIR ...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$logs"
# The check reads the worker's tensors through collective_rpc with a function, which vLLM only
# sends with its pickle fallback allowed (without it: "Object of type function is not
# serializable", H100 2026-12-07).
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 \
    VLLM_ALLOW_INSECURE_SERIALIZATION=1
timeout -k 10 "${VLLM_CHECK_TIMEOUT:-400}" python3 "$here/vllm_load_check.py" "$@" > "$logs/vllm_load.log" 2>&1
rc=$?
grep -E '^(PASS|FAIL) ' "$logs/vllm_load.log"
[ "$rc" = 124 ] && echo "FAIL vllm_load_check.py: timed out"
exit "$rc"
