#!/usr/bin/env bash
# Lays a model directory out as the Hugging Face hub cache holds a downloaded repository, so
# that `serve ORG/NAME` resolves it offline as it would a user's real download:
#   bash prepare_hf_cache.sh MODEL_DIR HF_HOME [ORG/NAME]
# writes HF_HOME/hub/models--ORG--NAME/{blobs/, refs/main, snapshots/<commit>/} with each
# snapshot file a relative link to its blob (the hub client's layout), the blobs hard-linked
# to MODEL_DIR's files (no copy of the 1.9 GB weights).
set -euo pipefail
src=${1:?usage: prepare_hf_cache.sh MODEL_DIR HF_HOME [ORG/NAME]}
home=${2:?usage: prepare_hf_cache.sh MODEL_DIR HF_HOME [ORG/NAME]}
repo=${3:-PaddlePaddle/PaddleOCR-VL}
commit=0123456789abcdef0123456789abcdef01234567
root="$home/hub/models--${repo//\//--}"
mkdir -p "$root/blobs" "$root/refs" "$root/snapshots/$commit"
printf '%s' "$commit" > "$root/refs/main"
for f in "$src"/*; do
    [ -f "$f" ] || continue
    blob=$(sha256sum "$f" | cut -c1-64)
    [ -e "$root/blobs/$blob" ] || ln "$f" "$root/blobs/$blob" 2>/dev/null || cp "$f" "$root/blobs/$blob"
    ln -sfn "../../blobs/$blob" "$root/snapshots/$commit/$(basename "$f")"
done
echo "prepared $root (snapshot $commit, $(ls "$root/snapshots/$commit" | wc -l) files)"
