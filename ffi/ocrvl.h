/*
 * ocrvl.h: the C ABI of ocrvl, an inference engine for PaddleOCR-VL-0.9B.
 *
 * Hand-written C99; tests/cpu/ffi_header.rs checks every declaration here against the Rust
 * exports in src/ffi/ (names, parameter and field types, field order, status values), and
 * tests/ffi_c.rs compiles and runs ffi/examples/ against the built libraries.
 *
 * Shape of the API: create an engine (blocks until the model is loaded), submit requests
 * (encoded images plus a task or a prompt), then per request either stream tokens with
 * ocrvl_request_next or block in ocrvl_request_wait, and read the text with
 * ocrvl_request_text. Every function returns an ocrvl_status (except the three small
 * getters documented as such); on anything but OCRVL_OK the calling thread's last error
 * message says why (ocrvl_last_error).
 *
 * Memory: the library never frees a caller's memory and never hands out memory the caller
 * must free with free(). The two opaque handles are freed with their own functions. All
 * buffers passed in are only read (or written) during the call; none is kept.
 *
 * Thread safety:
 *   - Functions that take no handle may be called from any thread at any time.
 *   - An ocrvl_engine may be used from any number of threads at once (ocrvl_submit is
 *     thread-safe), except that ocrvl_engine_destroy must not run concurrently with any
 *     other call on the same engine.
 *   - Calls on one ocrvl_request are serialised by the library, so they are safe from any
 *     thread, but the request functions are meant for one consumer thread at a time;
 *     ocrvl_request_cancel is the one meant for another thread (it never waits on a
 *     blocked ocrvl_request_next). ocrvl_request_free must not run concurrently with any
 *     other call on the same request.
 *   - The last error message is per thread.
 *
 * ABI evolution: OCRVL_ABI_VERSION changes when a function, struct or value changes
 * incompatibly. Structs passed in or out start with struct_size, which the caller sets to
 * sizeof(struct) (the *_default functions do); fields are only ever appended, and a library
 * reads or writes only the fields both sides know.
 *
 * Linking: see README.md, "Linking from C".
 */
#ifndef OCRVL_H
#define OCRVL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OCRVL_ABI_VERSION 2u

/* Status of every call. Fixed-width (not an enum type) so the ABI does not depend on the
 * compiler's choice of enum size. New values are only appended. */
typedef int32_t ocrvl_status;
enum ocrvl_status_code {
    OCRVL_OK = 0,
    /* A null pointer, a bad length, a value out of range, invalid UTF-8, an undecodable image,
     * a prompt longer than max_model_len, a config the engine or GPU cannot hold. */
    OCRVL_INVALID_ARGUMENT = 1,
    /* The caller's buffer cannot hold the text; the call said how many bytes are needed and
     * nothing was consumed: call again with a larger buffer. */
    OCRVL_BUFFER_TOO_SMALL = 2,
    /* Nothing arrived within timeout_ms; the request keeps running. */
    OCRVL_TIMEOUT = 3,
    /* The request has finished and every event was delivered. */
    OCRVL_FINISHED = 4,
    /* The request was cancelled (ocrvl_request_cancel, or the engine was destroyed). */
    OCRVL_CANCELLED = 5,
    /* The engine is not available: it failed to start or was shut down. */
    OCRVL_NOT_READY = 6,
    /* No usable CUDA device: no driver, no GPU, or no device with that ordinal. */
    OCRVL_NO_DEVICE = 7,
    /* A file could not be read or written (model directory, synthetic model directory). */
    OCRVL_IO = 8,
    /* The model directory's content is wrong: config, weights, tokenizer, preprocessor. */
    OCRVL_MODEL = 9,
    /* A CUDA driver, cuBLAS or kernel call failed (out of GPU memory included). */
    OCRVL_GPU = 10,
    /* The engine failed a step this request was in; the engine keeps serving others. */
    OCRVL_REQUEST_FAILED = 11,
    /* A bug in ocrvl (a caught panic); the message says where. */
    OCRVL_INTERNAL = 12
};

/* Tasks: the prompts PaddleOCR-VL was trained with ("OCR:", "Table Recognition:", ...). */
enum ocrvl_task {
    OCRVL_TASK_OCR = 0,
    OCRVL_TASK_TABLE = 1,
    OCRVL_TASK_FORMULA = 2,
    OCRVL_TASK_CHART = 3,
    /* The prompt text is given by the caller (ocrvl_submit's prompt argument). */
    OCRVL_TASK_PROMPT = 4,
    /* PaddleOCR-VL-1.5 and later (ABI 2). "Spotting:": text lines, each followed by 8
     * <|LOC_n|> tokens, n in 0..=1000: the line's four corners (x, y) as thousandths of the
     * image's width and height. The tokens are special: read them with the text decoded
     * without skipping special tokens. */
    OCRVL_TASK_SPOTTING = 5,
    /* "Seal Recognition:": the text of seals and stamps. */
    OCRVL_TASK_SEAL = 6
};

enum ocrvl_finish_reason {
    /* Still running. */
    OCRVL_FINISH_NONE = 0,
    /* End of sequence (or a stop token). */
    OCRVL_FINISH_STOP = 1,
    /* max_tokens or max_model_len reached. */
    OCRVL_FINISH_LENGTH = 2,
    OCRVL_FINISH_CANCELLED = 3,
    /* The engine failed the request (OCRVL_REQUEST_FAILED). */
    OCRVL_FINISH_FAILED = 4
};

enum ocrvl_event_kind {
    /* One generated token and the text it completes (possibly empty). */
    OCRVL_EVENT_TOKEN = 1,
    /* The request ended: the text is what was held back, if anything; finish_reason says why. */
    OCRVL_EVENT_DONE = 2
};

/* Three-way switches in ocrvl_engine_config: 0 keeps the default. */
enum ocrvl_switch {
    OCRVL_SWITCH_DEFAULT = 0,
    OCRVL_SWITCH_ON = 1,
    OCRVL_SWITCH_OFF = 2
};

/* ocrvl_engine_config.quantization: how the weights are stored on the GPU. */
enum ocrvl_quantization {
    /* The checkpoint's bfloat16 weights as they are (the default). */
    OCRVL_QUANTIZATION_NONE = 0,
    /* `--quantization wint8`: ERNIE-4.5-VL's routed experts as int8 with one f32 scale per
     * output row, quantised at load time; PaddleOCR-VL (no experts) refuses it. */
    OCRVL_QUANTIZATION_WINT8 = 1
};

/* Opaque handles. */
typedef struct ocrvl_engine ocrvl_engine;
typedef struct ocrvl_request ocrvl_request;

/* Engine settings. A zero field means the default, so `ocrvl_engine_config c = {0};
 * c.struct_size = sizeof c;` is a valid config; ocrvl_engine_config_default fills in the
 * default values explicitly. Strings are NUL-terminated paths, read during
 * ocrvl_engine_create only. */
typedef struct ocrvl_engine_config {
    uint32_t struct_size;             /* sizeof(ocrvl_engine_config) */
    uint32_t device;                  /* CUDA device ordinal (0) */
    const char* model_dir;            /* hub model directory; NULL: a full-size synthetic model
                                         (random weights, synthetic tokenizer) */
    const char* synthetic_dir;        /* where the synthetic model is written once and reused;
                                         NULL: $OCRVL_SYNTHETIC_DIR, else
                                         ~/.cache/ocrvl/synthetic/paddleocr-vl-0.9b-seed0 */
    uint64_t max_model_len;           /* prompt + output tokens per request (16384) */
    uint64_t max_num_batched_tokens;  /* token budget of one engine step (8192) */
    uint32_t max_num_seqs;            /* requests running at once, 1..256 (256) */
    uint32_t max_images_per_request;  /* (4) */
    double gpu_memory_utilization;    /* fraction of GPU memory to use, (0, 1] (0.9) */
    int32_t enable_prefix_caching;    /* ocrvl_switch (on) */
    int32_t enforce_eager;            /* ocrvl_switch: no CUDA graphs (off) */
    int32_t quantization;             /* ocrvl_quantization (NONE). Appended after the first
                                         layout: a struct_size that ends before it keeps NONE */
} ocrvl_engine_config;

/* Sampling of one request. A zero field means the default: greedy, no penalties, up to
 * max_model_len tokens, stop at end of sequence. Values outside vLLM's ranges are refused by
 * ocrvl_submit with OCRVL_INVALID_ARGUMENT, the message naming the field. */
typedef struct ocrvl_sampling_params {
    uint32_t struct_size;      /* sizeof(ocrvl_sampling_params) */
    float temperature;         /* 0: greedy; else in (0, 2] */
    float top_p;               /* (0, 1]; 0 means 1 (off) */
    int32_t top_k;             /* 0: off */
    uint64_t seed;             /* same seed, same output (for temperature > 0) */
    float repetition_penalty;  /* [1e-6, 2]; 0 means 1 (off) */
    float frequency_penalty;   /* [-2, 2]; 0: off */
    float presence_penalty;    /* [-2, 2]; 0: off */
    uint32_t max_tokens;       /* 0: up to max_model_len minus the prompt */
    int32_t ignore_eos;        /* 0 or 1: keep generating past end of sequence */
} ocrvl_sampling_params;

/* What ocrvl_request_next delivers (its text goes to the caller's buffer). */
typedef struct ocrvl_token_event {
    uint32_t struct_size;   /* in: sizeof(ocrvl_token_event) */
    int32_t kind;           /* ocrvl_event_kind */
    uint32_t token;         /* TOKEN: the token id */
    float logprob;          /* TOKEN: its log-probability */
    int32_t finish_reason;  /* DONE: ocrvl_finish_reason; TOKEN: OCRVL_FINISH_NONE */
    size_t text_len;        /* bytes of text, NUL not counted (also on BUFFER_TOO_SMALL) */
} ocrvl_token_event;

/* Counters of one request (ocrvl_request_get_info). */
typedef struct ocrvl_request_info {
    uint32_t struct_size;           /* in: sizeof(ocrvl_request_info) */
    int32_t finish_reason;          /* ocrvl_finish_reason; NONE while running */
    uint64_t prompt_tokens;         /* image tokens included */
    uint64_t completion_tokens;     /* tokens generated so far */
    double time_to_first_token_ms;  /* submit to the first token; set once finished, else 0 */
    double total_ms;                /* submit to the last token; set once finished, else 0 */
} ocrvl_request_info;

/* ---- Library ------------------------------------------------------------------------- */

/* OCRVL_ABI_VERSION of the library actually linked: compare it with the header's. */
uint32_t ocrvl_abi_version(void);

/* "OCRVL_OK", "OCRVL_NO_DEVICE", ...: a static string, never NULL, never freed
 * ("OCRVL_UNKNOWN_STATUS" for a value this library does not know). */
const char* ocrvl_status_name(ocrvl_status status);

/* Copies the calling thread's last error message, NUL-terminated and cut at a UTF-8
 * boundary if `capacity` is too small, into `buf` (which may be NULL when capacity is 0).
 * Returns the message's full length in bytes without the NUL (0: no error yet), like
 * snprintf: call with a buffer of that length + 1 to get all of it. Each call that returns a
 * status other than OCRVL_OK replaces the message; OCRVL_OK leaves it as it was. */
size_t ocrvl_last_error(char* buf, size_t capacity);

/* Fills `config` with the defaults and struct_size. */
ocrvl_status ocrvl_engine_config_default(ocrvl_engine_config* config);

/* Fills `params` with the defaults (greedy) and struct_size. */
ocrvl_status ocrvl_sampling_params_default(ocrvl_sampling_params* params);

/* ---- Engine -------------------------------------------------------------------------- */

/* Starts an engine and blocks until it is ready (seconds for a model directory; the first
 * run with a synthetic model also writes it, about 1.9 GB) or has failed. `config` NULL means
 * all defaults. Settings are checked before anything loads (OCRVL_INVALID_ARGUMENT), then the
 * GPU is opened (OCRVL_NO_DEVICE), then the model (OCRVL_IO, OCRVL_MODEL, OCRVL_GPU).
 * The environment variables FLAGS_flash_attn_version and FD_SAMPLING_CLASS are read here;
 * start-up progress is logged to stderr unless OCRVL_QUIET is set.
 * On OCRVL_OK, *out_engine is a new engine the caller owns and frees with
 * ocrvl_engine_destroy; otherwise *out_engine is set to NULL. */
ocrvl_status ocrvl_engine_create(const ocrvl_engine_config* config, ocrvl_engine** out_engine);

/* Stops the engine: requests still running end as cancelled (their handles stay valid and
 * must still be freed), the engine thread exits and GPU memory is released before this
 * returns. NULL is allowed (does nothing). The handle is invalid afterwards. */
ocrvl_status ocrvl_engine_destroy(ocrvl_engine* engine);

/* ---- Requests ------------------------------------------------------------------------ */

/* Queues one request. `images[i]` points at `image_lens[i]` bytes of an encoded image (PNG,
 * JPEG, WebP, BMP, TIFF, GIF), in prompt order; both arrays have `num_images` entries and may
 * be NULL when it is 0. The bytes are decoded, resized and tokenised on the calling thread
 * and copied: the caller may reuse its buffers as soon as this returns. `task` is an
 * ocrvl_task; with OCRVL_TASK_PROMPT, `prompt` is the NUL-terminated UTF-8 prompt text,
 * otherwise `prompt` must be NULL. `sampling` NULL means the defaults (greedy).
 * Every problem with the request is reported here (OCRVL_INVALID_ARGUMENT) and nothing is
 * queued. On OCRVL_OK, *out_request is a new request the caller owns and frees with
 * ocrvl_request_free; otherwise it is set to NULL. Thread-safe. */
ocrvl_status ocrvl_submit(ocrvl_engine* engine, const uint8_t* const* images, const size_t* image_lens,
                          size_t num_images, int32_t task, const char* prompt,
                          const ocrvl_sampling_params* sampling, ocrvl_request** out_request);

/* Waits up to `timeout_ms` (negative: no limit; 0: just look) for the next event and fills
 * `event`. Its text is copied NUL-terminated into `text` (`text_capacity` bytes); with
 * `text` NULL and `text_capacity` 0 the text is not copied (ocrvl_request_text still has
 * it). Returns:
 *   OCRVL_OK               an event (TOKEN, then one DONE at the end);
 *   OCRVL_BUFFER_TOO_SMALL event->text_len + 1 bytes are needed; the event is kept and the
 *                          next call delivers it again;
 *   OCRVL_TIMEOUT          nothing yet; the request is still running;
 *   OCRVL_FINISHED         the DONE event was already delivered; nothing more will come;
 *   OCRVL_REQUEST_FAILED, OCRVL_NOT_READY  the engine failed the request or stopped (every
 *                          later call returns the same).
 * The concatenated texts of all events equal the final text (ocrvl_request_text). */
ocrvl_status ocrvl_request_next(ocrvl_request* request, int64_t timeout_ms, ocrvl_token_event* event, char* text,
                                size_t text_capacity);

/* Waits up to `timeout_ms` (negative: no limit) for the request to end, consuming its
 * events (their text is kept for ocrvl_request_text). Returns OCRVL_OK when it ended with
 * STOP or LENGTH, OCRVL_CANCELLED when cancelled, OCRVL_TIMEOUT when still running, or the
 * failure status ocrvl_request_next would return. */
ocrvl_status ocrvl_request_wait(ocrvl_request* request, int64_t timeout_ms);

/* Copies the text delivered so far (once finished: the final text; UTF-8, special tokens
 * skipped) NUL-terminated into `text`. *out_len (which may not be NULL) receives its length
 * without the NUL. Returns OCRVL_BUFFER_TOO_SMALL, copying nothing, when `capacity` is less
 * than *out_len + 1 (`text` may be NULL with capacity 0 to ask for the length). Never waits. */
ocrvl_status ocrvl_request_text(ocrvl_request* request, char* text, size_t capacity, size_t* out_len);

/* Fills `info` with the finish reason and token counts so far. Never waits. */
ocrvl_status ocrvl_request_get_info(ocrvl_request* request, ocrvl_request_info* info);

/* Asks the engine to stop the request; it then ends with OCRVL_FINISH_CANCELLED (already
 * generated text stays readable). Does nothing to a finished request. Returns at once; safe
 * to call from another thread while one waits in ocrvl_request_next or ocrvl_request_wait. */
ocrvl_status ocrvl_request_cancel(ocrvl_request* request);

/* Frees the request, cancelling it first if it is still running. NULL is allowed (does
 * nothing). May be called after ocrvl_engine_destroy. The handle is invalid afterwards. */
ocrvl_status ocrvl_request_free(ocrvl_request* request);

#ifdef __cplusplus
}
#endif

#endif /* OCRVL_H */
