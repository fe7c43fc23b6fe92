// Vision, non-causal varlen, d = 72 padded to 96 throughout (Q·Kᵀ over 96, P·V producing 96
// columns of which 72 are stored), the way FA2 runs d = 72 as its d96 kernel. Kept so that
// the bench measures the 72/80 tile (fwd_d72_qk80.cu) against plain padding on the same
// mainloop. Same tile otherwise; shared memory 256 rows * 208 B = 52 KiB.
#include "attention/fwd_sm80.cuh"

namespace ocrvl::attn {

template <>
int32_t run_fwd<72, 96, false, false>(const FwdArgs& args, int num_seqs, int num_heads, int max_seqlen_q,
                                      cudaStream_t stream) {
    using Kt = FwdTraits<72, 96, 96, 128, 64, 4, false, false>;
    return launch_fwd<Kt>(args, num_seqs, num_heads, max_seqlen_q, stream);
}

}  // namespace ocrvl::attn
