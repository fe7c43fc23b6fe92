// The per-thread record of the last CUDA error a launcher saw.
#include "common/check.cuh"

namespace ocrvl {

static thread_local const char* g_last_cuda_error = "no error";

void record_cuda_error(cudaError_t err) { g_last_cuda_error = cudaGetErrorName(err); }

}  // namespace ocrvl

extern "C" const char* ocrvl_last_cuda_error(void) { return ocrvl::g_last_cuda_error; }
