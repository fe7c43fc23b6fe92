#!/usr/bin/env bash
# Builds the release test, bench and binary executables, strips them, and puts them with
# run.sh into target/gpu-bundle/ for the GPU host (which has no Rust toolchain).
#   tools/gpu_bundle.sh            then, on the GPU host:  bash target/gpu-bundle/run.sh [LOGDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${OCRVL_BUNDLE_DIR:-target/gpu-bundle}  # another directory keeps a bundle in use intact
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tools"

# --all-targets builds the lib's unit tests, every test target (tests/cpu, tests/gpu, tests/*.rs), the criterion benches (run with
# --bench) and the binaries, all with the release profile, in one pass.
cargo test --release --all-targets --no-run --message-format=json 2>/dev/null > target/gpu-bundle.json
cargo build --release --lib --bins --quiet
python3 - "$bundle" <<'PY'
import json, shutil, sys, os
bundle = sys.argv[1]
for line in open("target/gpu-bundle.json"):
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if msg.get("manifest_path") != os.path.abspath("Cargo.toml"):
        continue
    kind = msg["target"]["kind"][0]
    name = msg["target"]["name"]
    if kind == "bin":
        continue  # the real binaries come from `cargo build --bins` below
    # lib unit tests -> test-unit; tests/x.rs -> test-x; benches/x.rs -> bench-x
    dest = {"test": f"test-{name}", "bench": f"bench-{name}"}.get(kind, "test-unit")
    dest = f"{bundle}/bin/{dest}"
    shutil.copy(msg["executable"], dest)
for b in ("bench", "ocrvl-logits", "serve", "ocr", "synth-model"):
    shutil.copy(f"target/release/{b}", f"{bundle}/bin/{b}")
# The previous commit's bench, for run.sh's before/after part (tools: cp it to target/before/).
if os.path.exists("target/before/bench"):
    shutil.copy("target/before/bench", f"{bundle}/bin/before-bench")
PY
# The C ABI's examples, linked statically against the release libocrvl.a, for tests/ffi_c.rs on
# the GPU host (which has no C toolchain): run.sh points OCRVL_FFI_BIN_DIR at them. libocrvl.a
# needs the CUDA runtime it was built with; the build script printed its directory.
cudart_dir=
for d in $(sed -n 's/^cargo:rustc-link-search=native=//p' $(ls -t target/release/build/ocrvl-*/output)); do
    if [ -z "$cudart_dir" ] && [ -f "$d/libcudart_static.a" ]; then cudart_dir=$d; fi
done
for ex in ocr_image abi_checks; do
    cc -std=c99 -O2 -I ffi "ffi/examples/$ex.c" target/release/libocrvl.a -L "$cudart_dir" \
        -lcudart_static -lstdc++ -ldl -lrt -lpthread -lm -lgcc_s -lutil -o "$bundle/bin/$ex"
done
strip "$bundle"/bin/*
# Only the GPU tests run on the GPU host (the CPU tests run in CI). Each executable links the
# same kernel fatbins, so one solid xz archive with a dictionary larger than an executable
# stores them once and keeps the bundle far under the 64 MiB the device tool carries.
find "$bundle/bin" -name 'test-*' ! -name test-gpu ! -name test-ffi_c ! -name test-server -delete
tar -C "$bundle" -cf - bin | xz -T1 -6e --lzma2=dict=192MiB > "$bundle/bin.tar.xz"
rm -rf "$bundle/bin"
cp tools/gpu_run.sh "$bundle/run.sh"
cp tools/gpu/*.py tools/gpu/*.sh tools/gpu/vllm_ernie/*.py "$bundle/tools/" 2>/dev/null || true
# The peer kit's measuring loop, which bench_vllm_ernie.py reuses (../shared does not travel).
for kit in target/vllm-kit/bench_vllm.py ../shared/peers/vllm/bench_vllm.py; do
    [ -e "$kit" ] && { cp "$kit" "$bundle/tools/"; break; }
done
# The openai client for server_check.sh (the GPU host has no network).
tools/gpu_wheels.sh
cp -r target/gpu-wheels "$bundle/wheels"
cp tools/compare_full_model.py "$bundle/"
du -sh "$bundle"
ls -la "$bundle"
