// Vision, non-causal varlen, d = 80: ERNIE-4.5-VL's ViT (1280 wide, 16 heads). The d = 72
// kernel's tile (fwd_d72_qk80.cu) with nothing padded: Q·Kᵀ over 80 (5 k16 steps) and P·V
// over 80 (10 n8 tiles). Tile kBlockM 128 (4 warps x two m16 tiles), kBlockN 64; O takes 80
// registers a thread. Shared memory (128 + 2 * 64) rows * 176 B = 44 KiB, as for d = 72.
// Not yet measured on the GPU host.
#include "attention/fwd_sm80.cuh"

namespace ocrvl::attn {

template <>
int32_t run_fwd<80, 80, false, false>(const FwdArgs& args, int num_seqs, int num_heads, int max_seqlen_q,
                                      cudaStream_t stream) {
    using Kt = FwdTraits<80, 80, 80, 128, 64, 4, false, false>;
    return launch_fwd<Kt>(args, num_seqs, num_heads, max_seqlen_q, stream);
}

}  // namespace ocrvl::attn
