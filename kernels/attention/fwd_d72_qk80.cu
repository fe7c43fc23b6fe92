// Vision, non-causal varlen, d = 72, the default 72/80 tile: Q·Kᵀ contracts over 80 (5 k16
// steps, shared-memory columns 72..79 zero) and P·V produces exactly 72 = 9 n8 tiles.
// MMA work per (query, key) pair: 80 + 72 = 152 multiply-adds against 144 useful, 5.6% over;
// padding the whole head to 96 (FA2's d96 kernel, fwd_d72_qk96.cu) runs 96 + 96 = 192,
// 33% over (a quarter of the tensor-core work is padding).
//
// Tile: kBlockM 128 (4 warps x two m16 tiles), kBlockN 64, as for d = 128; O takes 72
// registers a thread, S 64 (244 in all). Shared memory (128 + 2 * 64) rows * 176 B = 44 KiB.
// Measured on the H100, 4 x 5040 patches (TFLOP/s counting 72-d work): this tile 285;
// padded to 96 (fwd_d72_qk96.cu) 267; 3 CTAs/SM (168 registers, spills) 273; kBlockN 32 at
// 3 CTAs/SM 246; 8 warps x one m16 tile 172; the lazy O rescale 279, so it stays off.
#include "attention/fwd_sm80.cuh"

namespace ocrvl::attn {

template <>
int32_t run_fwd<72, 80, false, false>(const FwdArgs& args, int num_seqs, int num_heads, int max_seqlen_q,
                                      cudaStream_t stream) {
    using Kt = FwdTraits<72, 80, 72, 128, 64, 4, false, false>;
    return launch_fwd<Kt>(args, num_seqs, num_heads, max_seqlen_q, stream);
}

}  // namespace ocrvl::attn
