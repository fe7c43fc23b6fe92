// Whether the sm_90a kernels (wgmma, TMA, setmaxnreg: FA3 and the MoE wgmma grouped GEMM) can
// run: this build has sm_90a code (OCRVL_CUDA_ARCHS contains 90a) and the current device is
// sm_90 (H100, H200). Host-side; a few driver attribute reads per call.
#pragma once
#include <cuda_runtime.h>

namespace ocrvl {

inline bool sm90a_device() {
#ifdef OCRVL_HAS_SM90A
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return false;
    return major == 9 && minor == 0;
#else
    return false;
#endif
}

}  // namespace ocrvl
