// Text prefill, causal, d = 128, K/V from the paged cache.
//
// Tile: kBlockM 128 (4 warps x two m16 tiles), kBlockN 64, 2 CTAs per SM. Two m16 tiles per
// warp let every K/V fragment read from shared memory feed two MMAs; kBlockN 64 makes a key
// tile exactly one cache block at the default block_size 64 and keeps S at 64 registers a
// thread beside the 128 of O (254 registers, no spill on sm_90a). Shared memory
// (128 + 2 * 64) rows * 272 B = 68 KiB a CTA.
// Measured on the H100 (causal 1x8192 / 4x2048, TFLOP/s): this tile 349 / 299; kBlockN 32:
// 257 / -; 8 warps x one m16 tile (1 CTA/SM): 214 / -; 3 CTAs/SM (168 registers, spills):
// - / 153. The lazy O rescale (FwdTraits) measured 352 / 295: a wash, so it stays off here.
#include "attention/fwd_sm80.cuh"

namespace ocrvl::attn {

template <>
int32_t run_fwd<128, 128, true, true>(const FwdArgs& args, int num_seqs, int num_heads, int max_seqlen_q,
                                      cudaStream_t stream) {
    using Kt = FwdTraits<128, 128, 128, 128, 64, 4, true, true>;
    return launch_fwd<Kt>(args, num_seqs, num_heads, max_seqlen_q, stream);
}

}  // namespace ocrvl::attn
