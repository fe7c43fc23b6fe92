// FA3 path, vision, non-causal varlen, d = 72 (fa3_fwd.cuh): Q·Kᵀ over 80 (5 k16 steps), P·V
// over N = 72 (the default, 152 multiply-adds per (query, key) against 144 useful) or over
// N = 128 (both column blocks whole; 208; kept as the fallback should the N = 72 operand
// addressing, 64 + 8 columns across two swizzle atoms, misbehave on hardware).
#include "attention/fa3_fwd.cuh"

namespace ocrvl::attn::fa3 {

template <>
int32_t run_fa3<72, 72, false, false>(const Fa3Params& params, int mainloop, int num_seqs, int num_heads,
                                       int max_seqlen_q, cudaStream_t stream) {
    return launch_fa3_mainloop<72, 72, false, false>(params, mainloop, num_seqs, num_heads, max_seqlen_q, stream);
}

template <>
int32_t run_fa3<72, 128, false, false>(const Fa3Params& params, int mainloop, int num_seqs, int num_heads,
                                        int max_seqlen_q, cudaStream_t stream) {
    return launch_fa3_mainloop<72, 128, false, false>(params, mainloop, num_seqs, num_heads, max_seqlen_q, stream);
}

}  // namespace ocrvl::attn::fa3
