// Status handling shared by every launcher: no exit, no printf, a status code instead.
#pragma once
#include <cuda_runtime.h>

#include "common.h"

namespace ocrvl {

// Records the error name for ocrvl_last_cuda_error() on this host thread.
void record_cuda_error(cudaError_t err);

// Maps the launch's cudaPeekAtLastError to a status. Peek, not Get: a sticky error from
// earlier work stays visible to the caller's next driver call as well.
inline int32_t launch_status() {
    cudaError_t err = cudaPeekAtLastError();
    if (err != cudaSuccess) {
        record_cuda_error(err);
        return OCRVL_STATUS_CUDA_ERROR;
    }
    return OCRVL_STATUS_OK;
}

}  // namespace ocrvl

#define OCRVL_CHECK_ARG(cond) \
    do {                      \
        if (!(cond)) return OCRVL_STATUS_INVALID_ARGUMENT; \
    } while (0)
