#!/usr/bin/env bash
# Downloads the `openai` Python client and its dependencies as wheels for CPython 3.10-3.13 on
# x86-64 Linux into target/gpu-wheels (once), for the GPU host, which has no network.
# tools/gpu_bundle.sh copies them; tools/gpu/server_check.sh installs them when `import openai`
# fails there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/gpu-wheels
if [ -n "$(ls "$dest"/openai-*.whl 2>/dev/null)" ]; then exit 0; fi
mkdir -p "$dest"
for v in 3.10 3.11 3.12 3.13; do
    python3 -m pip download -q --dest "$dest" --python-version "$v" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --only-binary=:all: openai
done
du -sh "$dest"
