/*
 * abi_checks: checks of ocrvl's C ABI from C, run by tests/ffi_c.rs.
 *
 *   abi_checks [--device N] [--synthetic-dir DIR]   checks that need no GPU (CI); the last
 *                                                   one creates an engine on device N
 *                                                   (default 99, which no host has) and
 *                                                   expects OCRVL_NO_DEVICE
 *   abi_checks --with-engine IMAGE [--synthetic-dir DIR]
 *                                                   request-level checks on a real engine
 *                                                   (GPU host; a small synthetic engine)
 *
 * Prints "sizeof NAME N" for each struct (the Rust test compares them with its own sizes),
 * one "ok: ..." line per passed check and "FAIL: ..." per failed one; the exit status is the
 * number of failures (0: all passed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ocrvl.h"

static int failures = 0;

/* Checks that `got` is `want`, and that the last error mentions `needle` (if given). */
static void expect(const char* what, ocrvl_status got, ocrvl_status want, const char* needle) {
    char msg[512] = "";
    if (got != OCRVL_OK) ocrvl_last_error(msg, sizeof msg);
    if (got != want) {
        printf("FAIL: %s: got %s, want %s (%s)\n", what, ocrvl_status_name(got), ocrvl_status_name(want), msg);
        failures++;
    } else if (needle && !strstr(msg, needle)) {
        printf("FAIL: %s: %s but the message lacks \"%s\": %s\n", what, ocrvl_status_name(got), needle, msg);
        failures++;
    } else {
        printf("ok: %s: %s%s%s\n", what, ocrvl_status_name(got), msg[0] ? ": " : "", msg);
    }
}

static void check(const char* what, int ok) {
    printf("%s: %s\n", ok ? "ok" : "FAIL", what);
    if (!ok) failures++;
}

/* A create that must fail with `want`; the out handle must come back NULL. */
static void expect_create(const char* what, const ocrvl_engine_config* c, ocrvl_status want, const char* needle) {
    ocrvl_engine* engine = (ocrvl_engine*)&failures; /* junk: must be overwritten with NULL */
    ocrvl_status st = ocrvl_engine_create(c, &engine);
    expect(what, st, want, needle);
    check("a failed create sets *out_engine to NULL", engine == NULL);
    if (st == OCRVL_OK) ocrvl_engine_destroy(engine);
}

static void gpu_free_checks(uint32_t device, const char* synthetic_dir) {
    check("ocrvl_abi_version() == OCRVL_ABI_VERSION", ocrvl_abi_version() == OCRVL_ABI_VERSION);
    check("ocrvl_status_name(OCRVL_NO_DEVICE)", strcmp(ocrvl_status_name(OCRVL_NO_DEVICE), "OCRVL_NO_DEVICE") == 0);
    check("ocrvl_status_name(-1)", strcmp(ocrvl_status_name(-1), "OCRVL_UNKNOWN_STATUS") == 0);

    /* Null pointers are statuses, never crashes. */
    expect("engine_config_default(NULL)", ocrvl_engine_config_default(NULL), OCRVL_INVALID_ARGUMENT, "config");
    expect("engine_create(.., NULL)", ocrvl_engine_create(NULL, NULL), OCRVL_INVALID_ARGUMENT, "out_engine");
    ocrvl_request* req = (ocrvl_request*)&failures;
    expect("submit(NULL engine)", ocrvl_submit(NULL, NULL, NULL, 0, OCRVL_TASK_OCR, NULL, NULL, &req),
           OCRVL_INVALID_ARGUMENT, "engine");
    check("a failed submit sets *out_request to NULL", req == NULL);
    expect("submit(.., NULL out)", ocrvl_submit(NULL, NULL, NULL, 0, OCRVL_TASK_OCR, NULL, NULL, NULL),
           OCRVL_INVALID_ARGUMENT, "out_request");
    ocrvl_token_event ev;
    memset(&ev, 0, sizeof ev);
    ev.struct_size = sizeof ev;
    expect("request_next(NULL)", ocrvl_request_next(NULL, 0, &ev, NULL, 0), OCRVL_INVALID_ARGUMENT, "request");
    expect("request_wait(NULL)", ocrvl_request_wait(NULL, 0), OCRVL_INVALID_ARGUMENT, "request");
    size_t len = 0;
    expect("request_text(NULL)", ocrvl_request_text(NULL, NULL, 0, &len), OCRVL_INVALID_ARGUMENT, "request");
    ocrvl_request_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    expect("request_get_info(NULL)", ocrvl_request_get_info(NULL, &info), OCRVL_INVALID_ARGUMENT, "request");
    expect("request_cancel(NULL)", ocrvl_request_cancel(NULL), OCRVL_INVALID_ARGUMENT, "request");
    expect("request_free(NULL)", ocrvl_request_free(NULL), OCRVL_OK, NULL);
    expect("engine_destroy(NULL)", ocrvl_engine_destroy(NULL), OCRVL_OK, NULL);

    /* The last error is copied snprintf-style: cut to the buffer, full length returned. */
    ocrvl_request_cancel(NULL);
    char small[8];
    size_t full = ocrvl_last_error(small, sizeof small);
    check("ocrvl_last_error truncates and returns the full length", full > 7 && strlen(small) == 7);
    check("ocrvl_last_error(NULL, 0) returns the length", ocrvl_last_error(NULL, 0) == full);

    /* Configs the engine cannot take are rejected before anything loads. */
    ocrvl_engine_config c;
    expect("engine_config_default", ocrvl_engine_config_default(&c), OCRVL_OK, NULL);
    c.synthetic_dir = synthetic_dir;
    ocrvl_engine_config bad = c;
    bad.gpu_memory_utilization = 1.5;
    expect_create("gpu_memory_utilization 1.5", &bad, OCRVL_INVALID_ARGUMENT, "gpu-memory-utilization");
    bad = c;
    bad.max_num_seqs = 300;
    expect_create("max_num_seqs 300", &bad, OCRVL_INVALID_ARGUMENT, "max-num-seqs");
    bad = c;
    bad.max_model_len = 1u << 30;
    expect_create("max_model_len 2^30", &bad, OCRVL_INVALID_ARGUMENT, "max_position_embeddings");
    bad = c;
    bad.enforce_eager = 7;
    expect_create("enforce_eager 7", &bad, OCRVL_INVALID_ARGUMENT, "enforce_eager");
    bad = c;
    bad.quantization = 7;
    expect_create("quantization 7", &bad, OCRVL_INVALID_ARGUMENT, "quantization");
    bad = c;
    bad.struct_size = 4;
    expect_create("struct_size 4", &bad, OCRVL_INVALID_ARGUMENT, "struct_size");
    bad = c;
    bad.model_dir = "/nonexistent/ocrvl-model";
    expect_create("model_dir that does not exist", &bad, OCRVL_IO, "/nonexistent/ocrvl-model");

    /* A device that is not there: reported before any model is written or loaded. */
    bad = c;
    bad.device = device;
    expect_create("engine on a missing device", &bad, OCRVL_NO_DEVICE, "no CUDA device");
}

static uint8_t* read_file(const char* path, size_t* len) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t* buf = n > 0 ? malloc((size_t)n) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Request-level checks on a real engine: bad requests are statuses, cancel ends a request. */
static void engine_checks(const char* image_path, const char* synthetic_dir) {
    size_t image_len = 0;
    uint8_t* image = read_file(image_path, &image_len);
    check("read the image", image != NULL);
    if (!image) return;
    ocrvl_engine_config c;
    ocrvl_engine_config_default(&c);
    c.synthetic_dir = synthetic_dir;
    c.max_model_len = 4096;
    c.max_num_seqs = 8;
    c.gpu_memory_utilization = 0.5;
    ocrvl_engine* engine = NULL;
    ocrvl_status st = ocrvl_engine_create(&c, &engine);
    expect("engine_create (small synthetic engine)", st, OCRVL_OK, NULL);
    if (st != OCRVL_OK) { free(image); return; }

    const uint8_t* images[1] = {image};
    size_t lens[1] = {image_len};
    ocrvl_request* req = NULL;
    const char bad_utf8[] = {'O', 'C', 'R', (char)0xff, 0};
    expect("prompt with invalid UTF-8", ocrvl_submit(engine, images, lens, 1, OCRVL_TASK_PROMPT, bad_utf8, NULL, &req),
           OCRVL_INVALID_ARGUMENT, "UTF-8");
    const uint8_t junk[4] = {1, 2, 3, 4};
    const uint8_t* junk_images[1] = {junk};
    size_t junk_lens[1] = {sizeof junk};
    expect("undecodable image", ocrvl_submit(engine, junk_images, junk_lens, 1, OCRVL_TASK_OCR, NULL, NULL, &req),
           OCRVL_INVALID_ARGUMENT, "image 0");
    const uint8_t* five[5] = {image, image, image, image, image};
    size_t five_lens[5] = {image_len, image_len, image_len, image_len, image_len};
    expect("five images (limit 4)", ocrvl_submit(engine, five, five_lens, 5, OCRVL_TASK_OCR, NULL, NULL, &req),
           OCRVL_INVALID_ARGUMENT, "limit");
    ocrvl_sampling_params s;
    ocrvl_sampling_params_default(&s);
    s.top_p = -1.0f;
    expect("top_p -1", ocrvl_submit(engine, images, lens, 1, OCRVL_TASK_OCR, NULL, &s, &req), OCRVL_INVALID_ARGUMENT,
           "top_p");

    /* Cancel: a long request ends as cancelled, and wait says so. */
    ocrvl_sampling_params_default(&s);
    s.ignore_eos = 1;
    st = ocrvl_submit(engine, images, lens, 1, OCRVL_TASK_OCR, NULL, &s, &req);
    expect("submit a long request", st, OCRVL_OK, NULL);
    if (st == OCRVL_OK) {
        ocrvl_token_event ev;
        memset(&ev, 0, sizeof ev);
        ev.struct_size = sizeof ev;
        expect("first token", ocrvl_request_next(req, 60000, &ev, NULL, 0), OCRVL_OK, NULL);
        expect("cancel", ocrvl_request_cancel(req), OCRVL_OK, NULL);
        expect("wait after cancel", ocrvl_request_wait(req, 60000), OCRVL_CANCELLED, "cancelled");
        expect("next after the end", ocrvl_request_next(req, 0, &ev, NULL, 0), OCRVL_FINISHED, NULL);
        ocrvl_request_info info;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        expect("get_info", ocrvl_request_get_info(req, &info), OCRVL_OK, NULL);
        check("finish reason is CANCELLED", info.finish_reason == OCRVL_FINISH_CANCELLED);
        check("at least one token before the cancel", info.completion_tokens >= 1);
        ocrvl_request_free(req);
    }

    /* Destroy with a request still running: the request ends as cancelled, stays readable. */
    st = ocrvl_submit(engine, images, lens, 1, OCRVL_TASK_OCR, NULL, &s, &req);
    expect("submit, then destroy the engine", st, OCRVL_OK, NULL);
    expect("engine_destroy", ocrvl_engine_destroy(engine), OCRVL_OK, NULL);
    if (st == OCRVL_OK) {
        ocrvl_status w = ocrvl_request_wait(req, 60000);
        check("a request outliving its engine ends (CANCELLED or NOT_READY)", w == OCRVL_CANCELLED || w == OCRVL_NOT_READY);
        ocrvl_request_free(req);
    }
    free(image);
}

int main(int argc, char** argv) {
    uint32_t device = 99;
    const char* synthetic_dir = NULL;
    const char* engine_image = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--device") == 0) device = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--synthetic-dir") == 0) synthetic_dir = argv[i + 1];
        else if (strcmp(argv[i], "--with-engine") == 0) engine_image = argv[i + 1];
        else { fprintf(stderr, "abi_checks: unknown argument %s\n", argv[i]); return 100; }
    }
    if (argc % 2 == 0) { fprintf(stderr, "abi_checks: every option takes a value\n"); return 100; }
    printf("abi_version %u\n", ocrvl_abi_version());
    printf("sizeof ocrvl_engine_config %zu\n", sizeof(ocrvl_engine_config));
    printf("sizeof ocrvl_sampling_params %zu\n", sizeof(ocrvl_sampling_params));
    printf("sizeof ocrvl_token_event %zu\n", sizeof(ocrvl_token_event));
    printf("sizeof ocrvl_request_info %zu\n", sizeof(ocrvl_request_info));
    if (engine_image) engine_checks(engine_image, synthetic_dir);
    else gpu_free_checks(device, synthetic_dir);
    printf("%d failure(s)\n", failures);
    return failures;
}
