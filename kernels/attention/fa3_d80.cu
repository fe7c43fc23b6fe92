// FA3 path, vision, non-causal varlen, d = 80 (ERNIE-4.5-VL's ViT, 16 heads of 80; fa3_fwd.cuh),
// the OCRVL_FA3_VISION_M128 tile: Q·Kᵀ over 80 (5 k16 steps), P·V N = 80 (64 columns in the
// first block, 16 in the second), 2 consumer warpgroups, 2 K/V stages. The same kernel as
// fa3_d72.cu's default with 8 more useful columns; until this file the d80 ViT ran FA2.
#include "attention/fa3_fwd.cuh"

namespace ocrvl::attn::fa3 {

template <>
int32_t run_fa3<80, 80, false, false>(const Fa3Params& params, int mainloop, int num_seqs, int num_heads,
                                       int max_seqlen_q, cudaStream_t stream) {
    return launch_fa3_mainloop<80, 80, false, false>(params, mainloop, num_seqs, num_heads, max_seqlen_q, stream);
}

}  // namespace ocrvl::attn::fa3
