#!/usr/bin/env bash
# Runs the GPU bundle on the GPU host: every test executable with --include-ignored, the
# criterion benches, then the bench binary. Full logs go to LOGDIR (default $OUT, else
# ./logs); a short summary table is printed last. It writes 4 files (tests.log, benches.log,
# bench.log, bench.json), since the device tool brings back 8 at most.
#   bash target/gpu-bundle/run.sh [tests|benches|bench|baseline|async|sanitizer|soak|ab|checks|seeds|ernie|ernie-full|ernie-bench|vllm-ernie|moe-ab|attn-d80|ncu-paddle|wint8|round11-verify|round11-ab|round12|round12-ernie|round13|round13-ernie|round13-quick|all] [LOGDIR]
# One device call runs at most 10 minutes, so the parts run as separate calls: `tests` (every
# test executable, then the server check), `benches` (criterion benches and torch baselines),
# `bench` (the bench binary's workloads, the full-size fidelity check and transformers'
# side-by-side run).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
part=${1:-all}
logs=${2:-${OUT:-$here/logs}}
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
# tests/ffi_c.rs runs the prebuilt C examples from here instead of compiling them.
export OCRVL_FFI_BIN_DIR="$bin"

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

{ nvidia-smi; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv; } >> "$logs/gpu.log" 2>&1

if [ "$part" = tests ] || [ "$part" = all ]; then
    for t in "$bin"/test-*; do
        # One thread: GPU tests share one device and time nothing, but parallel runs would
        # interleave their memory use. The time limit turns a hung kernel into a failure.
        # TEST_SKIP: a name filter to leave out (e.g. a long statistics test already run).
        # ernie_full_size needs transformers' full-size run first: the `ernie-full` part.
        run_step "$(basename "$t")" "$logs/tests.log" timeout 300 "$t" --include-ignored --test-threads=1 \
            --skip ernie_full_size ${TEST_SKIP:+--skip "$TEST_SKIP"}
    done
    # SERVER_CHECK=0 leaves the server check out (when a call must fit other parts).
    [ "${SERVER_CHECK:-1}" = 1 ] && run_step "server_check.sh" "$logs/tests.log" timeout 200 bash "$here/tools/server_check.sh" "$bin" "$logs"
fi
if [ "$part" = benches ] || [ "$part" = all ]; then
    for b in "$bin"/bench-*; do
        run_step "$(basename "$b")" "$logs/benches.log" timeout 120 "$b" --bench
    done
    for py in "$here"/tools/baseline_*.py; do
        [ -e "$py" ] || continue
        [ "$(basename "$py")" = baseline_engine.py ] && continue
        run_step "$(basename "$py")" "$logs/benches.log" timeout 120 python3 "$py"
    done
fi
synth=${OCRVL_SYNTHETIC_DIR:-$HOME/.cache/ocrvl/synthetic/paddleocr-vl-0.9b-seed0}
if [ "$part" = bench ] || [ "$part" = all ]; then
    # Model steps, then every workload on one engine: decode at the issue's shape (1024 requests
    # x 1024 in x 1024 out), the image workloads with fewer requests.
    run_step "bench (binary)" "$logs/bench.log" timeout 300 "$bin/bench" --synthetic-dir "$synth" --workload all \
        --num-requests decode=1024,page-1080p=512,page-360p=512,crops=1024 --json "$logs/bench.json"
    # The decode shape transformers can afford in the same run (1024 in x 256 out).
    run_step "bench decode 1024/256" "$logs/bench.log" timeout 100 "$bin/bench" --synthetic-dir "$synth" \
        --no-model-steps --workload decode --num-requests 512 --output-len 256 --json "$logs/bench_decode256.json"
    if [ -e "$here/compare_full_model.py" ]; then
        run_step "compare_full_model.py" "$logs/bench.log" timeout 120 python3 "$here/compare_full_model.py" --ocrvl "$bin/ocrvl-logits"
    fi
fi
if [ "$part" = async ]; then
    # Async scheduling A/B in one call: every workload with the defaults (async scheduling
    # on), then decode and page-360p with --no-async-scheduling, on the same GPU.
    run_step "bench (async on)" "$logs/bench.log" timeout 300 "$bin/bench" --synthetic-dir "$synth" --workload all \
        --num-requests decode=1024,page-1080p=512,page-360p=512,crops=1024 --json "$logs/bench.json"
    run_step "bench (async off)" "$logs/bench.log" timeout 150 "$bin/bench" --synthetic-dir "$synth" \
        --no-model-steps --workload decode,page-360p --num-requests decode=1024,page-360p=512 \
        --no-async-scheduling --json "$logs/bench_noasync.json"
fi
if [ "$part" = baseline ] || [ "$part" = all ]; then
    # A fresh machine has no synthetic model yet: the bench writes it (and times model steps).
    [ -e "$synth/model.safetensors" ] || run_step "bench (model steps)" "$logs/baseline.log" "$bin/bench" \
        --synthetic-dir "$synth" --workload none
    # transformers generate on the same workloads and weights: one batch each after a warm-up.
    run_step "baseline_engine.py" "$logs/baseline.log" timeout 500 python3 "$here/tools/baseline_engine.py" \
        --model "$synth" --workloads "${BASELINE_WORKLOADS:-decode,page-1080p,page-360p,crops}" --seconds 0 \
        --output-len 256 --json "$logs/baseline.json" \
        $( [ -e "$logs/bench.json" ] && echo --bench-json "$logs/bench.json" ) \
        $( [ -e "$logs/bench_decode256.json" ] && echo --bench-json "$logs/bench_decode256.json" )
fi
if [ "$part" = sanitizer ]; then
    # compute-sanitizer racecheck and synccheck over one small engine test, a verdict per tool.
    run_step "sanitizer_check.sh" "$logs/sanitizer.log" timeout 560 bash "$here/tools/sanitizer_check.sh" "$bin" "$logs"
fi
if [ "$part" = soak ]; then
    # SOAK_MINUTES (default 7, so that start-up, traffic, the drain and the shutdown fit one
    # 10-minute device call) of random traffic against serve on the synthetic model (written
    # first on a fresh machine: run `bench` or `baseline` before, or lower SOAK_MINUTES).
    soak_min=${SOAK_MINUTES:-7}
    run_step "soak.py ($soak_min min)" "$logs/soak.log" timeout $(( soak_min * 60 + 150 )) python3 "$here/tools/soak.py" \
        --serve "$bin/serve" --minutes "$soak_min" --logdir "$logs"
fi

if [ "$part" = ab ]; then
    # Before/after on the same GPU in one call: the previous commit's bench (carried in the
    # bundle as before-bench, when gpu_bundle.sh found target/before/bench) and this one's,
    # alternating, model steps plus every workload at reduced request counts.
    if [ -x "$bin/before-bench" ]; then
        # The synthetic model written by this round's code (its directory layout changed).
        [ -e "$synth/model.safetensors" ] || "$bin/bench" --synthetic-dir "$synth" --workload none \
            --no-model-steps >> "$logs/ab.log" 2>&1
        for round in $(seq 1 "${AB_ROUNDS:-2}"); do
            for which in before after; do
                exe="$bin/bench"; [ "$which" = before ] && exe="$bin/before-bench"
                run_step "bench $which ($round)" "$logs/ab.log" timeout 240 "$exe" --synthetic-dir "$synth" \
                    --workload all --num-requests decode=512,page-1080p=256,page-360p=512,crops=1024 \
                    --output-len 512 --json "$logs/ab_${which}_${round}.json"
            done
        done
        python3 "$here/tools/ab_table.py" "$logs" 2>&1 | tee -a "$logs/ab.log"
    else
        echo "no before-bench in the bundle" | tee -a "$logs/ab.log"
    fi
fi
if [ "$part" = checks ]; then
    # Serving checks of this round, in parallel where they share nothing: see checks.sh. The
    # seed command lines run in their own part (`seeds`) so the soak's 8 minutes fit a call.
    SEEDS=0 run_step "checks.sh" "$logs/checks.log" timeout 595 bash "$here/tools/checks.sh" "$bin" "$logs"
    tail -n 30 "$logs/checks.log"
fi
if [ "$part" = ernie ]; then
    # ERNIE-4.5-VL at full width (3 decoder layers, 2 ViT blocks, 64+64 experts: `--reduced`,
    # 5.3 GB): transformers' oracle for it with greedy tokens and ocrvl's fidelity test against
    # it, then the engine workloads (decode, image-qa, multi-image) with fewer requests.
    red=${ERNIE_DIR:-/tmp/ernie-reduced}
    oracle=${ERNIE_ORACLE_DIR:-/tmp/ernie-oracle-reduced}
    [ -e "$oracle/report.json" ] || run_step "ernie_oracle.py (reduced)" "$logs/ernie.log" timeout 240 \
        python3 "$here/tools/ernie_oracle.py" --variant reduced --generate 16 --out "$oracle"
    OCRVL_ERNIE_ORACLE_DIR=$oracle run_step "test-gpu ernie_oracle" "$logs/ernie.log" timeout 240 \
        "$bin/test-gpu" --include-ignored --test-threads=1 --nocapture ernie_oracle
    if [ "${ERNIE_BENCH:-1}" = 1 ]; then  # ERNIE_BENCH=0: the fidelity test alone
        [ -e "$red/config.json" ] || run_step "synth-model ernie --reduced" "$logs/ernie.log" timeout 120 \
            "$bin/synth-model" --arch ernie-4.5-vl-28b-a3b --reduced --out "$red"
        run_step "bench (ERNIE reduced)" "$logs/ernie.log" timeout 300 "$bin/bench" --model "$red" \
            --max-model-len 8192 --workload all --num-requests decode=512,image-qa=256,multi-image=128 \
            --json "$logs/bench_ernie.json"
    fi
    grep -E '^(chunks of|decode:|decode step|image features)' "$logs/ernie.log"
    grep -E '^\|' "$logs/ernie.log"
fi
if [ "$part" = ernie-full ]; then
    # The full-size ERNIE-4.5-VL-28B-A3B (random weights): transformers builds it on the GPU,
    # runs the prompt and 32 greedy tokens in bf16 and saves it (59 GB, ~4 min); ocrvl loads
    # that directory and follows its greedy tokens (tests/gpu/ernie_full_greedy.rs).
    full=${ERNIE_FULL_ORACLE_DIR:-/tmp/ernie-oracle-full}
    [ -e "$full/report.json" ] || run_step "ernie_oracle.py (full)" "$logs/ernie_full.log" timeout 480 \
        python3 "$here/tools/ernie_oracle.py" --variant full --generate 32 --out "$full"
    OCRVL_ERNIE_FULL_ORACLE_DIR=$full run_step "test-gpu ernie_full_size" "$logs/ernie_full.log" timeout 300 \
        "$bin/test-gpu" --include-ignored --test-threads=1 --nocapture ernie_full_size
    grep -E '^(prompt,|decode|full size)' "$logs/ernie_full.log"
fi
if [ "$part" = ernie-bench ]; then
    # ocrvl's bench on the full-size ERNIE-4.5-VL-28B-A3B: the hub-form config, tokenizer and
    # processor of `synth-model --config-only`, the weights made in memory (--load-format
    # dummy: synth-model's seed-0 values, 58.8 GB), as vLLM runs below with its own.
    # ERNIE_WEIGHTS=synth writes the checkpoint itself (58.8 GB, to the RAM disk /dev/shm: the
    # 64 GB root disk cannot hold it) and loads it from there, as vllm-ernie then does: the one
    # comparison with vLLM that is fair (vLLM's own dummy weights, uniform +-1e-3, give every
    # token the same experts: the correction bias alone picks them).
    if [ "${ERNIE_WEIGHTS:-dummy}" = synth ]; then
        cfgdir=/dev/shm/ernie-full; format=auto
        [ -e "$cfgdir/config.json" ] || run_step "synth-model ERNIE full" "$logs/ernie_bench.log" timeout 300 \
            "$bin/synth-model" --arch ernie-4.5-vl-28b-a3b --out "$cfgdir"
    else
        cfgdir=/tmp/ernie-full-config; format=dummy
        [ -e "$cfgdir/config.json" ] || "$bin/synth-model" --arch ernie-4.5-vl-28b-a3b --config-only --out "$cfgdir" >> "$logs/ernie_bench.log" 2>&1
    fi
    run_step "bench (ERNIE full, $format)" "$logs/ernie_bench.log" timeout ${BENCH_TIMEOUT:-560} "$bin/bench" --model "$cfgdir" \
        --load-format $format --max-model-len 16384 --workload ${ERNIE_WORKLOADS:-all} \
        --num-requests ${ERNIE_NUM_REQUESTS:-decode=512,image-qa=256,multi-image=128} --json "$logs/bench_ernie_full.json" \
        ${ERNIE_BENCH_ARGS:-}
    cp "$logs/bench_ernie_full.json" /tmp/ 2>/dev/null  # for vllm-ernie's prompt-count check, a later call
    grep -E '^(\||flags: |workload |weights|ocrvl: weights|engine: |  [0-9] x |  [0-9]+ steps: |  engine host time|  GPU time)' "$logs/ernie_bench.log"
fi
if [ "$part" = vllm-ernie ]; then
    # vLLM 0.26 (the kit, installed in /tmp/site) on the same workloads and the same config,
    # with its own random weights (load_format dummy): the shim gives it Baidu's config and
    # processor interface (tools/gpu/vllm_ernie). VLLM_MODEL=tiny runs the tiny model instead
    # (a check that the shim loads, in about a minute).
    export PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0
    if [ "${VLLM_MODEL:-full}" = tiny ]; then
        src=/tmp/ernie-tiny; dst=/tmp/ernie-tiny-vllm
        "$bin/synth-model" --arch ernie-4.5-vl-28b-a3b --tiny --out "$src" >> "$logs/vllm_ernie.log" 2>&1
        extra="--num-requests decode=16,image-qa=16,multi-image=8 --output-len 32 --prompt-len 64"
    else
        extra="--num-requests ${ERNIE_NUM_REQUESTS:-decode=512,image-qa=256,multi-image=128} --workload ${ERNIE_WORKLOADS:-all}"
        if [ "${ERNIE_WEIGHTS:-dummy}" = synth ]; then  # the checkpoint ernie-bench wrote, linked
            src=/dev/shm/ernie-full; dst=/dev/shm/ernie-full-vllm; format=auto
        else
            src=/tmp/ernie-full-config; dst=/tmp/ernie-full-vllm; format=dummy
            [ -e "$src/config.json" ] || "$bin/synth-model" --arch ernie-4.5-vl-28b-a3b --config-only --out "$src" >> "$logs/vllm_ernie.log" 2>&1
        fi
    fi
    python3 "$here/tools/prepare_vllm_ernie_dir.py" "$src" "$dst" >> "$logs/vllm_ernie.log" 2>&1
    run_step "vLLM (ERNIE ${VLLM_MODEL:-full}, ${format:-dummy})" "$logs/vllm_ernie.log" timeout ${VLLM_TIMEOUT:-560} \
        python3 "$here/tools/bench_vllm_ernie.py" --model "$dst" --load-format ${format:-dummy} $extra \
        --ocrvl-json /tmp/bench_ernie_full.json --json "$logs/vllm_ernie.json" ${VLLM_ARGS:-}
    grep -E '^(  [a-z-]+: |engine ready|attention:|  *(decode|image-qa|multi-image): )' "$logs/vllm_ernie.log"
    tail -n 25 "$logs/vllm_ernie.log"
fi
if [ "$part" = attn-d80 ]; then
    # ERNIE-4.5-VL's d80 vision attention: the FA3 d80 tests (every built tile x mainloop
    # against f64), then bench-attention, whose rows print before criterion's filter applies
    # (every shape is timed once; criterion then runs only the d80 rows).
    run_step "test-gpu attention_d80" "$logs/attn_d80.log" timeout 200 "$bin/test-gpu" --include-ignored \
        --test-threads=1 attention_d80
    run_step "bench-attention" "$logs/attn_d80.log" timeout 300 "$bin/bench-attention" --bench vision_1x7200_d80
    grep -E '^attention vision_(1x7200_d80|4x5040_d72_qk80(_fa3(_m192)?)?:)' "$logs/attn_d80.log"
fi
if [ "$part" = moe-ab ]; then
    # The router's split-k kernel, A/B in one call (benches/moe.rs twice; with
    # OCRVL_MOE_ROUTER_TILED=1 the tiled kernel runs at every size), the MoE kernel tests, then where
    # an ERNIE decode step's time goes: ncu's per-kernel GPU time over ~7 decode steps of the
    # reduced model (3 layers at full width: dense, MoE, MoE; eager so every kernel is a launch).
    run_step "bench-moe (defaults)" "$logs/moe_ab.log" timeout 150 "$bin/bench-moe" --bench
    OCRVL_MOE_ROUTER_TILED=1 run_step "bench-moe (router tiled)" "$logs/moe_ab.log" timeout 150 \
        "$bin/bench-moe" --bench
    run_step "test-gpu moe" "$logs/moe_ab.log" timeout 200 "$bin/test-gpu" --include-ignored --test-threads=1 moe
    red=/tmp/ernie-reduced-config
    [ -e "$red/config.json" ] || "$bin/synth-model" --arch ernie-4.5-vl-28b-a3b --reduced --config-only \
        --out "$red" >> "$logs/moe_ab.log" 2>&1
    [ "${NCU:-1}" = 1 ] && run_step "ncu: reduced ERNIE decode" "$logs/ncu.log" timeout 240 ncu --clock-control none \
        --cache-control none --metrics gpu__time_duration.sum --csv --launch-skip ${NCU_SKIP:-4000} \
        --launch-count ${NCU_COUNT:-600} "$bin/bench" --model "$red" --load-format dummy \
        --enforce-eager --workload decode --num-requests decode=128 --prompt-len 1024 --output-len 256 \
        --max-model-len 4096 --warmup 8
    grep -E '^(block_|gate_up_|down_|router_logits_)|^=== bench-moe' "$logs/moe_ab.log"
    python3 "$OCRVL_REPO_DIR/tools/gpu/ncu_summary.py" "$logs/ncu.log"
fi
if [ "$part" = wint8 ]; then
    # --quantization wint8 (ERNIE-4.5-VL's routed experts as int8 with row scales): the grouped
    # GEMM's int8 tests, the MoE block and the tiny model against its dequantised checkpoint,
    # with the FA3 d80 ViT's tests (ernie_family, ernie_oracle, attention_d80); bench-moe's
    # int8 rows next to the bf16 ones; then the full model's decode with int8 experts (dummy
    # weights; WINT8_DECODE=0 skips it).
    run_step "test-gpu wint8 + d80" "$logs/wint8.log" timeout ${TEST_TIMEOUT:-200} "$bin/test-gpu" --include-ignored \
        --test-threads=1 grouped_gemm moe_block ernie_wint8 router_logits attention_d80 ernie_family ernie_oracle
    grep -E '^test .*(ok|FAILED)$|^test result' "$logs/wint8.log"
    run_step "bench-moe" "$logs/wint8.log" timeout 120 "$bin/bench-moe" --bench
    grep -E '^(gate_up|down)_text_decode|^block_decode|^=== bench-moe' "$logs/wint8.log"
    if [ "${WINT8_DECODE:-1}" = 1 ]; then
        ERNIE_WORKLOADS=decode ERNIE_NUM_REQUESTS=${ERNIE_NUM_REQUESTS:-decode=256} \
            ERNIE_BENCH_ARGS="--quantization wint8" bash "$0" ernie-bench "$logs"
    fi
fi
if [ "$part" = round12 ]; then
    # Round 12's first call: the whole GPU suite (the rope launch that writes the KV cache, the
    # wgmma grouped GEMM's tests against f64, every engine test through both decoders), the C
    # ABI's tests, bench-moe with the automatic grouped GEMM and with OCRVL_MOE_GEMM=mma (its
    # prefill_gemm rows compare the three kernels in each run), bench-rope's rope_cache rows,
    # then round11-ab (PaddleOCR-VL model steps and workloads against before-bench).
    # The new kernel's tests first, on their own: a fault there shows before the long suite.
    run_step "test-gpu grouped_gemm" "$logs/tests.log" timeout 120 "$bin/test-gpu" --include-ignored \
        --test-threads=1 grouped_gemm
    run_step test-gpu "$logs/tests.log" timeout ${TEST_TIMEOUT:-300} "$bin/test-gpu" --include-ignored --test-threads=1 \
        --skip ernie_full_size --skip grouped_gemm ${VERIFY_FILTER:-}
    run_step test-ffi_c "$logs/tests.log" timeout 90 "$bin/test-ffi_c" --include-ignored --test-threads=1
    grep -E '^test .*FAILED$|^test result|panicked' "$logs/tests.log" | head -20
    run_step "bench-moe (auto)" "$logs/moe.log" timeout 90 "$bin/bench-moe" --bench block_prefill
    OCRVL_MOE_GEMM=mma run_step "bench-moe (OCRVL_MOE_GEMM=mma)" "$logs/moe.log" timeout 90 "$bin/bench-moe" \
        --bench block_prefill
    grep -E '^=== |^block_|^prefill_gemm' "$logs/moe.log"
    run_step "bench-rope" "$logs/benches.log" timeout 60 "$bin/bench-rope" --bench rope_cache
    grep -E '^rope_cache' "$logs/benches.log" | head -12
    bash "$0" round11-ab "$logs"
fi
if [ "$part" = round12-ernie ]; then
    # The wgmma grouped GEMM inside ERNIE-4.5-VL: the MoE block and model tests with
    # OCRVL_MOE_GEMM=wgmma (AUTO takes wgmma only from 4 tiles per expert, which the tests'
    # short prompts never reach), then the full model's bench (synthetic checkpoint in
    # /dev/shm, as vllm-ernie reads it): AUTO, then image-qa and multi-image again with
    # OCRVL_MOE_GEMM=mma (the A/B in one call).
    OCRVL_MOE_GEMM=wgmma run_step "test-gpu ernie + moe (OCRVL_MOE_GEMM=wgmma)" "$logs/tests_ernie.log" timeout 200 \
        "$bin/test-gpu" --include-ignored --test-threads=1 --skip ernie_full_size ernie moe
    grep -E '^test .*FAILED$|^test result|panicked' "$logs/tests_ernie.log" | head -20
    ERNIE_WEIGHTS=synth ERNIE_NUM_REQUESTS=${ERNIE_NUM_REQUESTS:-decode=256,image-qa=128,multi-image=64} \
        BENCH_TIMEOUT=240 bash "$0" ernie-bench "$logs"
    cp "$logs/bench_ernie_full.json" "$logs/bench_ernie_auto.json"
    [ "${MMA_AB:-1}" = 1 ] && OCRVL_MOE_GEMM=mma run_step "bench (ERNIE full, OCRVL_MOE_GEMM=mma)" "$logs/ernie_mma.log" \
        timeout 200 "$bin/bench" --model /dev/shm/ernie-full --max-model-len 16384 --workload image-qa,multi-image \
        --num-requests image-qa=128,multi-image=64 --json "$logs/bench_ernie_mma.json" \
        && grep -E '^\| (image-qa|multi-image)|^workload ' "$logs/ernie_mma.log"
fi
if [ "$part" = round13 ]; then
    # Round 13's second call (after round13-quick): the whole GPU suite and the C ABI's
    # tests, then PaddleOCR-VL's workloads with bench's GPU-time split (vision passes, steps
    # with prefill, decode-only steps).
    run_step test-gpu "$logs/tests.log" timeout ${TEST_TIMEOUT:-330} "$bin/test-gpu" --include-ignored --test-threads=1 \
        --skip ernie_full_size ${VERIFY_FILTER:-}
    run_step test-ffi_c "$logs/tests.log" timeout 90 "$bin/test-ffi_c" --include-ignored --test-threads=1
    grep -E '^test .*FAILED$|^test result|panicked' "$logs/tests.log" | head -20
    run_step "bench (PaddleOCR-VL)" "$logs/bench.log" timeout 150 "$bin/bench" --no-model-steps \
        --workload page-1080p,crops,decode --num-requests page-1080p=256,crops=512,decode=512 --output-len 256 \
        --json "$logs/bench.json"
    grep -E '^\| (decode|page|crops)|^workload |^  GPU time' "$logs/bench.log"
fi
if [ "$part" = round13-ernie ]; then
    # ERNIE-4.5-VL's correctness with a wgmma ring forced everywhere (TEST_RING, default the
    # in-flight ring: AUTO takes wgmma only from 4 tiles per expert, which the tests never
    # reach), then the full model's three workloads with AUTO (synthetic checkpoint in
    # /dev/shm, which vllm-ernie reads next). round13-quick has the rings' A/B.
    OCRVL_MOE_GEMM=${TEST_RING:-wgmma-inflight} run_step "test-gpu ernie + moe (${TEST_RING:-wgmma-inflight})" \
        "$logs/tests_ernie.log" timeout 200 "$bin/test-gpu" --include-ignored --test-threads=1 --skip ernie_full_size ernie moe
    grep -E '^test .*FAILED$|^test result|panicked' "$logs/tests_ernie.log" | head -20
    ERNIE_WEIGHTS=synth ERNIE_NUM_REQUESTS=${ERNIE_NUM_REQUESTS:-decode=256,image-qa=128,multi-image=64} \
        BENCH_TIMEOUT=240 bash "$0" ernie-bench "$logs"
fi
if [ "$part" = round13-quick ]; then
    # Round 13 for a short device budget (about 6 minutes): the grouped GEMM's tests (every
    # wgmma kernel against f64), bench-moe's prefill rows (all five kernels), bench's model
    # steps (the decode overlap rows), ERNIE-4.5-VL's image workloads with AUTO and with the
    # wgmma kernel bench-moe measured fastest at 8192 tokens (both pools), printing the
    # GPU-time split, then the decode-shape GEMMs with 8 and 32 autotune candidates.
    run_step "test-gpu grouped_gemm" "$logs/tests.log" timeout 120 "$bin/test-gpu" --include-ignored \
        --test-threads=1 grouped_gemm
    grep -E '^test .*(ok|FAILED)$|^test result' "$logs/tests.log"
    run_step "bench-moe" "$logs/moe.log" timeout 90 "$bin/bench-moe" --bench block_prefill
    grep -E '^block_prefill|^prefill_gemm pool . tokens 8192' "$logs/moe.log"
    ring=$(python3 - "$logs/moe.log" <<'PY'
import re, sys
env = {"Wgmma": "wgmma", "Wgmma2Stage": "wgmma2", "WgmmaInFlight": "wgmma-inflight", "WgmmaInFlight5": "wgmma-inflight5"}
total = {}
for line in open(sys.argv[1]):
    m = re.match(r"prefill_gemm pool \d tokens 8192 (\w+): gate/up ([\d.]+) us .*; down ([\d.]+) us", line)
    if m and m.group(1) in env:
        total[m.group(1)] = total.get(m.group(1), 0.0) + float(m.group(2)) + float(m.group(3))
print(env[min(total, key=total.get)] if total else "wgmma-inflight")
PY
)
    echo "fastest wgmma kernel at 8192 tokens: $ring"
    run_step "bench (model steps)" "$logs/bench.log" timeout 120 "$bin/bench" --workload none
    grep -E '^\| (vision|decoder|decode step)' "$logs/bench.log"
    cfgdir=/dev/shm/ernie-full
    [ -e "$cfgdir/config.json" ] || run_step "synth-model ERNIE full" "$logs/ernie_ab.log" timeout 300 \
        "$bin/synth-model" --arch ernie-4.5-vl-28b-a3b --out "$cfgdir"
    for choice in auto $ring; do
        env_ring=$([ $choice = auto ] && echo "" || echo $choice)
        OCRVL_MOE_GEMM=$env_ring run_step "bench (ERNIE full, OCRVL_MOE_GEMM=$choice)" "$logs/ernie_ab.log" \
            timeout 150 "$bin/bench" --model $cfgdir --max-model-len 16384 --workload image-qa,multi-image \
            --num-requests image-qa=128,multi-image=64 --json "$logs/bench_ernie_$choice.json"
    done
    grep -E '^=== |^\| (image-qa|multi-image)|^workload |^  GPU time' "$logs/ernie_ab.log"
    run_step "bench-gemm" "$logs/benches.log" timeout 120 "$bin/bench-gemm" --bench _b256
    grep -E '^gemm .*(b256|b128|b64)' "$logs/benches.log" | head -30
fi
if [ "$part" = round11-verify ]; then
    # A round's verification in one call: the GPU suite (or the tests VERIFY_FILTER names),
    # the C ABI's tests, the rope bench's rows, then round11-ab (one round).
    run_step test-gpu "$logs/tests.log" timeout ${TEST_TIMEOUT:-300} "$bin/test-gpu" --include-ignored --test-threads=1 \
        --skip ernie_full_size ${VERIFY_FILTER:-}
    run_step test-ffi_c "$logs/tests.log" timeout 120 "$bin/test-ffi_c" --include-ignored --test-threads=1
    grep -E '^test .*FAILED$|^test result' "$logs/tests.log"
    run_step "bench-rope" "$logs/benches.log" timeout 60 "$bin/bench-rope" --bench
    grep -E '^rope_cache|^rope/|mrope|vision_rope' "$logs/benches.log" | grep -v Benchmarking | head -12
    bash "$0" round11-ab "$logs"
fi
if [ "$part" = round11-ab ]; then
    # PaddleOCR-VL end to end, in one call: this build and the session-start build
    # (before-bench: rope and write_kv as two launches, the model step's decode GEMMs not
    # tuned). Model steps plus decode and page-1080p, alternating, AB_ROUNDS times (1).
    args="--workload decode,page-1080p --num-requests decode=512,page-1080p=256 --output-len 256"
    for round in $(seq 1 "${AB_ROUNDS:-1}"); do
        run_step "bench (this build, $round)" "$logs/ab.log" timeout 150 "$bin/bench" $args \
            --json "$logs/ab_after_$round.json"
        [ -x "$bin/before-bench" ] && run_step "before-bench (session start, $round)" "$logs/ab.log" timeout 150 \
            "$bin/before-bench" $args --json "$logs/ab_before_$round.json"
    done
    grep -E '^=== |^\| (vision|decoder)|^\| (decode|page)|^workload ' "$logs/ab.log"
fi
if [ "$part" = ncu-paddle ]; then
    # Where PaddleOCR-VL's GPU time goes (issue 17), from ncu's per-kernel GPU time (one
    # metric, no clock or cache control, so kernels run as they do unprofiled).
    # 1. bench's model steps alone (`--workload none`): 12 vision passes of 5040 patches, 12
    #    decode steps at batch 256 x 1024 context, 12 prefill steps; every launch (~8k).
    run_step "ncu: PaddleOCR-VL model steps" "$logs/ncu_paddle_steps.log" timeout 300 ncu --clock-control none \
        --cache-control none --metrics gpu__time_duration.sum --csv "$bin/bench" --workload none
    # Each decoder forward holds two embedding_gather launches (two segments: the layers, then
    # the head); the first decode forward also runs the GEMM tuner's candidates (round 12).
    python3 "$here/tools/ncu_summary.py" "$logs/ncu_paddle_steps.log" 16 --split-at embedding_gather \
        --phases vision:1:12,tuning:2:1,decode:22:11,prefill:24:12 | tee "$logs/ncu_paddle_summary.txt"
    # 2. The engine's eager decode steps at batch 256 and ~1.1k context: the warm-up (~1.6k
    #    launches) and the 32 prefill steps (~6.5k) come first; skipping 12000 lands in the
    #    decode-only steps.
    [ "${NCU_ENGINE:-1}" = 1 ] && run_step "ncu: PaddleOCR-VL engine decode" "$logs/ncu_paddle.log" timeout 240 ncu \
        --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --launch-skip ${NCU_SKIP:-12000} \
        --launch-count ${NCU_COUNT:-600} "$bin/bench" --enforce-eager --no-model-steps --workload decode \
        --num-requests decode=256 --prompt-len 1024 --output-len 64 --warmup 8 \
        && python3 "$here/tools/ncu_summary.py" "$logs/ncu_paddle.log" 20 | tee -a "$logs/ncu_paddle_summary.txt"
fi
if [ "$part" = seeds ]; then
    SEEDS_ONLY=1 run_step "checks.sh (seeds)" "$logs/checks.log" timeout 300 bash "$here/tools/checks.sh" "$bin" "$logs"
    tail -n 16 "$logs/checks.log"
fi

echo
echo "== failures (first lines) =="
grep -hE '^(test .* FAILED|failures:|---- |thread .* panicked)' "$logs/tests.log" 2>/dev/null | head -n 20
echo
echo "== benches =="
grep -hE '(TFLOP/s|GB/s)' "$logs/benches.log" 2>/dev/null | grep -vE '^\s*(thrpt|time):' | head -n 80
grep -E '^(\||full-size)' "$logs/bench.log" 2>/dev/null
grep -E '^(workload |flags: |  engine host time)' "$logs/bench.log" 2>/dev/null
grep -E '^(transformers |ratio )' "$logs/baseline.log" 2>/dev/null
grep -E '^(PASS|FAIL) ' "$logs/sanitizer.log" 2>/dev/null
grep -E '^(\||note:)' "$logs/soak.log" 2>/dev/null
echo
echo "== summary =="
printf '| %-28s | %3s | %8s | %s |\n' step rc time result
for r in "${rows[@]}"; do echo "$r"; done
