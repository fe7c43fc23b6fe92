// extern "C" launchers for kernels/include/sampling.h (the general sampler and its greedy fast
// path): argument checks, dtype and alignment dispatch. Built without fast-math (the project
// never uses it; flashinfer's sampling bugs #769/#774 came from fast-math's flush-to-zero of
// small probabilities).
#include <stdint.h>

#include "common/check.cuh"
#include "sampling.h"
#include "sampling/greedy.cuh"
#include "sampling/sample_kernel.cuh"

namespace {

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

extern "C" int64_t ocrvl_sampling_workspace_size(int64_t history_capacity) {
    if (history_capacity < 0) return -1;
    // Keys and counts, 2 slots of each per history entry.
    return history_capacity * 4 * (int64_t)sizeof(int32_t);
}

extern "C" int32_t ocrvl_sampling(const OcrvlSamplingArgs* args, void* workspace, int64_t workspace_bytes,
                                  ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(args != nullptr);
    const OcrvlSamplingArgs& a = *args;
    OCRVL_CHECK_ARG(a.batch >= 0);
    if (a.batch == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(a.vocab >= 1 && a.logits_stride >= a.vocab);
    if (a.vocab > OCRVL_SAMPLING_MAX_VOCAB) return OCRVL_STATUS_UNSUPPORTED;
    OCRVL_CHECK_ARG(a.logits != nullptr && a.temperature != nullptr && a.top_k != nullptr && a.top_p != nullptr);
    OCRVL_CHECK_ARG(a.seed != nullptr && a.step != nullptr);
    OCRVL_CHECK_ARG(a.token != nullptr && a.logprob != nullptr && a.status != nullptr);
    OCRVL_CHECK_ARG(a.num_top >= 0 && a.num_top <= OCRVL_SAMPLING_MAX_TOP_N);
    OCRVL_CHECK_ARG(a.num_top == 0 || (a.top_ids != nullptr && a.top_logprobs != nullptr));
    const bool pen = a.cu_history != nullptr;
    OCRVL_CHECK_ARG((a.repetition_penalty != nullptr) == pen && (a.frequency_penalty != nullptr) == pen &&
                    (a.presence_penalty != nullptr) == pen);
    int64_t capacity = 0;
    if (pen) {
        capacity = a.history_capacity;
        OCRVL_CHECK_ARG(capacity >= 0 && (a.history != nullptr || capacity == 0));
        const int64_t need = ocrvl_sampling_workspace_size(capacity);
        OCRVL_CHECK_ARG(workspace_bytes >= need && (workspace != nullptr || need == 0));
    }

    ocrvl::sampling::KernelArgs k;
    k.logits = a.logits;
    k.stride = a.logits_stride;
    k.vocab = a.vocab;
    k.temperature = a.temperature;
    k.top_k = a.top_k;
    k.top_p = a.top_p;
    k.seed = a.seed;
    k.step = a.step;
    k.rep = a.repetition_penalty;
    k.freq = a.frequency_penalty;
    k.pres = a.presence_penalty;
    k.history = a.history;
    k.cu_history = a.cu_history;
    k.history_capacity = capacity;
    k.ws_keys = static_cast<int32_t*>(workspace);
    k.ws_counts = pen && workspace != nullptr ? k.ws_keys + 2 * capacity : nullptr;
    k.token = a.token;
    k.logprob = a.logprob;
    k.status = a.status;
    k.num_top = a.num_top;
    k.top_ids = a.top_ids;
    k.top_logprobs = a.top_logprobs;
    switch (a.sampling_class) {
        case OCRVL_SAMPLING_EXACT: k.rejection = false; break;
        case OCRVL_SAMPLING_REJECTION: k.rejection = true; break;
        default: return OCRVL_STATUS_UNSUPPORTED;
    }

    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    using ocrvl::sampling::launch_sampling;
    // 16-byte vectors need every row start aligned: the base, the stride and vocab.
    switch (a.logits_dtype) {
        case OCRVL_DTYPE_F32:
            if (a.vocab % 4 == 0 && a.logits_stride % 4 == 0 && aligned16(a.logits)) {
                return launch_sampling<float, 4>(k, a.batch, s);
            }
            return launch_sampling<float, 1>(k, a.batch, s);
        case OCRVL_DTYPE_BF16:
            if (a.vocab % 8 == 0 && a.logits_stride % 8 == 0 && aligned16(a.logits)) {
                return launch_sampling<__nv_bfloat16, 8>(k, a.batch, s);
            }
            return launch_sampling<__nv_bfloat16, 1>(k, a.batch, s);
        default: return OCRVL_STATUS_UNSUPPORTED;
    }
}

extern "C" int32_t ocrvl_sampling_greedy_num_splits(int32_t batch, int32_t vocab, int32_t num_sms) {
    if (batch < 1 || vocab < 1 || num_sms < 1) return 0;
    return ocrvl::sampling::greedy::num_splits(batch, vocab, num_sms);
}

extern "C" int64_t ocrvl_sampling_greedy_workspace_size(int32_t batch, int32_t num_splits) {
    if (batch < 0 || num_splits < 1 || num_splits > OCRVL_SAMPLING_GREEDY_MAX_SPLITS) return -1;
    if (num_splits == 1) return 0;
    return (int64_t)batch * num_splits * (int64_t)sizeof(ocrvl::sampling::greedy::Acc);
}

extern "C" int32_t ocrvl_sampling_greedy(const OcrvlSamplingGreedyArgs* args, void* workspace,
                                         int64_t workspace_bytes, ocrvl_stream_t stream) {
    OCRVL_CHECK_ARG(args != nullptr);
    const OcrvlSamplingGreedyArgs& a = *args;
    OCRVL_CHECK_ARG(a.batch >= 0);
    OCRVL_CHECK_ARG(a.num_splits >= 1 && a.num_splits <= OCRVL_SAMPLING_GREEDY_MAX_SPLITS);
    if (a.batch == 0) return OCRVL_STATUS_OK;
    OCRVL_CHECK_ARG(a.vocab >= 1 && a.logits_stride >= a.vocab);
    if (a.vocab > OCRVL_SAMPLING_MAX_VOCAB) return OCRVL_STATUS_UNSUPPORTED;
    OCRVL_CHECK_ARG(a.logits != nullptr && a.temperature != nullptr && a.top_k != nullptr && a.top_p != nullptr);
    OCRVL_CHECK_ARG(a.token != nullptr && a.logprob != nullptr && a.status != nullptr);
    const int64_t need = ocrvl_sampling_greedy_workspace_size(a.batch, a.num_splits);
    OCRVL_CHECK_ARG(workspace_bytes >= need && (need == 0 || (workspace != nullptr && aligned16(workspace))));

    ocrvl::sampling::greedy::GreedyKernelArgs k;
    k.logits = a.logits;
    k.stride = a.logits_stride;
    k.vocab = a.vocab;
    k.batch = a.batch;
    k.splits = a.num_splits;
    k.chunk = 0;  // set by the launcher, from the vector width
    k.temperature = a.temperature;
    k.top_k = a.top_k;
    k.top_p = a.top_p;
    k.token = a.token;
    k.logprob = a.logprob;
    k.status = a.status;
    k.partials = a.num_splits > 1 ? static_cast<ocrvl::sampling::greedy::Acc*>(workspace) : nullptr;

    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    using ocrvl::sampling::greedy::launch_greedy;
    // The same alignment rule as ocrvl_sampling: 16-byte vectors need every row start aligned.
    switch (a.logits_dtype) {
        case OCRVL_DTYPE_F32:
            if (a.vocab % 4 == 0 && a.logits_stride % 4 == 0 && aligned16(a.logits)) {
                return launch_greedy<float, 4>(k, s);
            }
            return launch_greedy<float, 1>(k, s);
        case OCRVL_DTYPE_BF16:
            if (a.vocab % 8 == 0 && a.logits_stride % 8 == 0 && aligned16(a.logits)) {
                return launch_greedy<__nv_bfloat16, 8>(k, s);
            }
            return launch_greedy<__nv_bfloat16, 1>(k, s);
        default: return OCRVL_STATUS_UNSUPPORTED;
    }
}
