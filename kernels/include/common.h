/* Shared C types for every kernel family. Pure C: this is bindgen's input, so no CUDA or C++
 * here. Every launcher returns an OcrvlStatus (as int32_t), takes an explicit stream last,
 * allocates nothing and never prints or exits. */
#pragma once
/* Only stdint.h: the libclang wheel that bindgen may use ships no compiler builtin headers
 * (stddef.h among them), while glibc provides stdint.h. Sizes are therefore int64_t. */
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a launcher's signature or a params struct changes. */
#define OCRVL_KERNELS_ABI_VERSION 1

typedef enum OcrvlStatus {
    OCRVL_STATUS_OK = 0,
    /* A pointer was null, a size negative, or sizes disagree. */
    OCRVL_STATUS_INVALID_ARGUMENT = 1,
    /* The arguments are valid but no kernel is built for them (dtype, head_dim, alignment). */
    OCRVL_STATUS_UNSUPPORTED = 2,
    /* The CUDA runtime reported an error at launch (cudaPeekAtLastError). */
    OCRVL_STATUS_CUDA_ERROR = 3,
} OcrvlStatus;

/* Values match ocrvl::runtime::DType. */
typedef enum OcrvlDType {
    OCRVL_DTYPE_BF16 = 0,
    OCRVL_DTYPE_F16 = 1,
    OCRVL_DTYPE_F32 = 2,
    OCRVL_DTYPE_I32 = 3,
    OCRVL_DTYPE_I8 = 4,
} OcrvlDType;

/* Same type as cudaStream_t and CUstream, without pulling in CUDA headers. */
typedef struct CUstream_st* ocrvl_stream_t;

/* The CUDA error behind the last OCRVL_STATUS_CUDA_ERROR returned on this host thread, as the
 * runtime's error name; "no error" when there was none. */
const char* ocrvl_last_cuda_error(void);

#ifdef __cplusplus
}
#endif
