#!/usr/bin/env bash
# Checks that the built FA3 attention kernels really use Hopper's tensor-core and copy engines:
# every sm_90a fa3_fwd_kernel in the newest built kernels/attention/fa3_*.cu objects must
# contain wgmma (HGMMA) and TMA loads (UTMALDG) in its SASS, so a silent fallback to mma.sync
# or to ordinary loads cannot pass. Prints the counts per kernel; exits 1 on any miss.
#
# Objects: the kernel object cache of build.rs, $OCRVL_KERNEL_BUILD_DIR or target/ocrvl-kernels
# (run `cargo build` first). cuobjdump: $CUOBJDUMP, else PATH, else beside the nvcc build.rs
# uses, else /usr/local/cuda/bin.
set -euo pipefail
cd "$(dirname "$0")/.."

objdir=${OCRVL_KERNEL_BUILD_DIR:-target/ocrvl-kernels}
find_cuobjdump() {
    if [[ -n "${CUOBJDUMP:-}" ]]; then echo "$CUOBJDUMP"; return; fi
    if command -v cuobjdump >/dev/null 2>&1; then command -v cuobjdump; return; fi
    local cands=(
        "${CUDA_HOME:-/nonexistent}/bin/cuobjdump"
        "${OCRVL_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ocrvl}/cuda-13.0/lib/python3.11/site-packages/nvidia/cu13/bin/cuobjdump"
        /usr/local/cuda/bin/cuobjdump
    )
    for c in "${cands[@]}"; do
        if [[ -x "$c" ]]; then echo "$c"; return; fi
    done
    echo "check_fa3_sass: no cuobjdump (set CUOBJDUMP)" >&2
    exit 2
}
cuobjdump=$(find_cuobjdump)

status=0
found=0
for stem in fa3_d128_paged_causal fa3_d128_paged fa3_d72 fa3_d72_s3 fa3_d72_m192; do
    # The cache keeps one object per source version; the newest is the current build's.
    obj=$(ls -t "$objdir/$stem"-*.o 2>/dev/null | head -n 1 || true)
    if [[ -z "$obj" ]]; then
        echo "MISSING  $stem: no object in $objdir (cargo build first)"
        status=1
        continue
    fi
    # One line per sm_90a kernel: name, HGMMA count, UTMALDG count.
    report=$("$cuobjdump" --dump-sass -arch sm_90a "$obj" | awk '
        /Function : / { if (name != "") print name, h, t; name = $3; h = 0; t = 0; next }
        /HGMMA/ { h++ }
        /UTMALDG/ { t++ }
        END { if (name != "") print name, h, t }')
    while read -r name h t; do
        [[ "$name" == *fa3_fwd_kernel* ]] || continue
        found=$((found + 1))
        verdict=ok
        if [[ "$h" -eq 0 || "$t" -eq 0 ]]; then verdict=FAIL; status=1; fi
        printf '%-5s %-24s HGMMA %3d  UTMALDG %3d  %s\n' "$verdict" "$stem" "$h" "$t" "$name"
    done <<<"$report"
done
if [[ $found -eq 0 ]]; then
    echo "FAIL: no sm_90a fa3_fwd_kernel found (a build without 90a in OCRVL_CUDA_ARCHS?)"
    status=1
fi
exit $status
