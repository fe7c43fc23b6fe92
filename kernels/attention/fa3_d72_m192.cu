// FA3 path, vision, non-causal varlen, d = 72 (Q·Kᵀ over 80, P·V over 72; fa3_fwd.cuh), the
// OCRVL_FA3_VISION_M192 tile: kBlockM 192 = 3 consumer warpgroups of 64 rows (FlashAttention-3's
// tile for head dims up to 96), 512 threads, setmaxnreg 24 / 160, 2 K/V stages: Q 48 KiB +
// 2 x 64 KiB = 176 KiB. Every K/V tile copied feeds 192 query rows instead of 128 (a third fewer
// copies per FLOP), and each warpgroup's softmax has two other warpgroups' matrix products to
// hide under. Costs: 4 x 5040 makes 27 x 64 = 1728 CTAs, 13.1 waves on 132 SMs (the last one
// 9% full) against 20 waves of 19.4 at kBlockM 128; 1 x 576 makes 48 CTAs against 80.
#include "attention/fa3_fwd.cuh"

namespace ocrvl::attn::fa3 {

int32_t run_fa3_d72_m192(const Fa3Params& params, int mainloop, int num_seqs, int num_heads, int max_seqlen_q,
                         cudaStream_t stream) {
    return launch_fa3_mainloop<72, 72, false, false, 3, 2>(params, mainloop, num_seqs, num_heads, max_seqlen_q,
                                                           stream);
}

}  // namespace ocrvl::attn::fa3
