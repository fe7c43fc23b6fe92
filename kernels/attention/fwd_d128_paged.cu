// Text prefill, non-causal, d = 128, K/V from the paged cache: every query sees all
// seqused_k keys. Not used by the model; it measures the mainloop without the causal
// triangle, against the non-causal target. Same tile as the causal variant, for the same
// reasons (fwd_d128_paged_causal.cu), plus the lazy O rescale: 363 against 344 TFLOP/s on
// 1x8192, 335 against 325 on 4x2048 (H100).
#include "attention/fwd_sm80.cuh"

namespace ocrvl::attn {

template <>
int32_t run_fwd<128, 128, true, false>(const FwdArgs& args, int num_seqs, int num_heads, int max_seqlen_q,
                                       cudaStream_t stream) {
    using Kt = FwdTraits<128, 128, 128, 128, 64, 4, true, false, 2, true>;
    return launch_fwd<Kt>(args, num_seqs, num_heads, max_seqlen_q, stream);
}

}  // namespace ocrvl::attn
