// FA3 path, text prefill, non-causal, d = 128, K/V from the paged cache (fa3_fwd.cuh); the
// non-causal benchmark of the mainloop. Same tile as the causal variant.
#include "attention/fa3_fwd.cuh"

namespace ocrvl::attn::fa3 {

template <>
int32_t run_fa3<128, 128, true, false>(const Fa3Params& params, int mainloop, int num_seqs, int num_heads,
                                        int max_seqlen_q, cudaStream_t stream) {
    return launch_fa3_mainloop<128, 128, true, false>(params, mainloop, num_seqs, num_heads, max_seqlen_q, stream);
}

}  // namespace ocrvl::attn::fa3
