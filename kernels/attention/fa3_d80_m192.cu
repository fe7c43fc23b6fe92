// FA3 path, vision, non-causal varlen, d = 80 (fa3_fwd.cuh), the OCRVL_FA3_VISION_M192 tile:
// kBlockM 192 = 3 consumer warpgroups of 64 rows, 512 threads, setmaxnreg 24 / 160, 2 K/V
// stages (176 KiB of shared memory), as fa3_d72_m192.cu. Not the default: at d 80 the
// overlapped mainloops need S + P + O = 64 + 32 + 40 registers besides addresses, more than 160
// allow, and ptxas serialises their wgmma (C7512); the serial mainloop compiles clean. Built to
// be timed against M128 on an ERNIE page (7200 patches for 1000x1400).
#include "attention/fa3_fwd.cuh"

namespace ocrvl::attn::fa3 {

int32_t run_fa3_d80_m192(const Fa3Params& params, int mainloop, int num_seqs, int num_heads, int max_seqlen_q,
                         cudaStream_t stream) {
    return launch_fa3_mainloop<80, 80, false, false, 3, 2>(params, mainloop, num_seqs, num_heads, max_seqlen_q,
                                                           stream);
}

}  // namespace ocrvl::attn::fa3
