// FA3 path, text prefill, causal, d = 128, K/V from the paged cache (fa3_fwd.cuh).
// Tile kBlockM 128 (2 consumer warpgroups x 64 rows, the M of one wgmma each), kBlockN 128:
// S and O are 64 registers a thread each, and a key tile is 2 cache blocks at the engine's
// block_size 64 (2 TMA boxes per column block).
#include "attention/fa3_fwd.cuh"

namespace ocrvl::attn::fa3 {

template <>
int32_t run_fa3<128, 128, true, true>(const Fa3Params& params, int mainloop, int num_seqs, int num_heads,
                                       int max_seqlen_q, cudaStream_t stream) {
    return launch_fa3_mainloop<128, 128, true, true>(params, mainloop, num_seqs, num_heads, max_seqlen_q, stream);
}

}  // namespace ocrvl::attn::fa3
