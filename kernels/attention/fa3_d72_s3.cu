// FA3 path, vision, non-causal varlen, d = 72 (Q·Kᵀ over 80, P·V over 72; fa3_fwd.cuh), the
// OCRVL_FA3_VISION_M128_S3 tile: kBlockM 128 (2 consumer warpgroups) with a 3-stage K/V ring,
// 32 + 3 x 64 = 224 KiB + 2 KiB of barriers and alignment slack (227 KiB is the limit). Each
// load goes out one more tile ahead than with 2 stages: at d 72 every mainloop runs at the same
// speed (serial 325, ping-pong 328 TFLOP/s, and P·V over 128 no slower), which points at the
// copies, not the tensor cores or the softmax.
#include "attention/fa3_fwd.cuh"

namespace ocrvl::attn::fa3 {

int32_t run_fa3_d72_s3(const Fa3Params& params, int mainloop, int num_seqs, int num_heads, int max_seqlen_q,
                       cudaStream_t stream) {
    return launch_fa3_mainloop<72, 72, false, false, 2, 3>(params, mainloop, num_seqs, num_heads, max_seqlen_q,
                                                           stream);
}

}  // namespace ocrvl::attn::fa3
