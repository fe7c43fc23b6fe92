#!/usr/bin/env bash
# Copies the bindings bindgen made in the last build over the checked-in fallback copy.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --lib --quiet
src=$(ls -t target/debug/build/ocrvl-*/out/sys.rs | head -n 1)
cp "$src" kernels/include/bindings.rs
echo "kernels/include/bindings.rs refreshed from $src"
