#!/usr/bin/env bash
# Builds the release test, bench and binary executables, strips them, and puts them with
# run.sh into target/gpu-bundle/ for the GPU host (which has no Rust toolchain).
#   tools/gpu_bundle.sh            then, on the GPU host:  bash target/gpu-bundle/run.sh [LOGDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=target/gpu-bundle
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tools"

# --all-targets builds the lib's unit tests, every tests/*.rs, the criterion benches (run with
# --bench) and the binaries, all with the release profile, in one pass.
cargo test --release --all-targets --no-run --message-format=json 2>/dev/null > target/gpu-bundle.json
cargo build --release --bins --quiet
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
for b in ("bench", "ocrvl-logits"):
    shutil.copy(f"target/release/{b}", f"{bundle}/bin/{b}")
PY
strip "$bundle"/bin/*
# Only the GPU tests run on the GPU host (the CPU tests run in CI). Each executable links the
# same kernel fatbins, so one solid xz archive with a dictionary larger than an executable
# stores them once and keeps the bundle far under the 64 MiB the device tool carries.
find "$bundle/bin" -name 'test-*' ! -name test-gpu -delete
tar -C "$bundle" -cf - bin | xz -T1 -6e --lzma2=dict=192MiB > "$bundle/bin.tar.xz"
rm -rf "$bundle/bin"
cp tools/gpu_run.sh "$bundle/run.sh"
cp tools/gpu/*.py "$bundle/tools/" 2>/dev/null || true
cp tools/compare_full_model.py "$bundle/"
du -sh "$bundle"
ls -la "$bundle"
