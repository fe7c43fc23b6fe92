/*
 * ocr_image: OCR one image file with ocrvl's C ABI, streaming the text as it is generated.
 *
 *   ocr_image [--model DIR] [--synthetic-dir DIR] [--task ocr|table|formula|chart|spotting|seal]
 *             [--prompt TEXT] [--device N] [--max-model-len N] [--max-num-seqs N]
 *             [--gpu-memory-utilization F] [--max-tokens N] IMAGE
 *
 * --prompt sends free text instead of a task (OCRVL_TASK_PROMPT), as ERNIE-4.5-VL takes it.
 *
 * Without --model a full-size synthetic model (random weights: the text is gibberish) is
 * written once and used. Output on stdout: the streamed text, then a line
 * "--- final text (N bytes) ---", the final text, and a line
 * "--- finish: REASON, prompt tokens P, completion tokens C ---".
 * Exit status 0 on success; otherwise the status name and ocrvl_last_error go to stderr.
 *
 * Build (see README.md, "Linking from C"):
 *   cc -std=c99 -I ffi ffi/examples/ocr_image.c target/release/libocrvl.a \
 *      -lstdc++ -lpthread -ldl -lrt -lm -o ocr_image
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ocrvl.h"

/* Prints why `what` failed and returns 1 (the exit status). */
static int fail(const char* what, ocrvl_status st) {
    char msg[1024];
    ocrvl_last_error(msg, sizeof msg);
    fprintf(stderr, "ocr_image: %s failed: %s: %s\n", what, ocrvl_status_name(st), msg);
    return 1;
}

/* Reads a whole file into a malloc'ed buffer; NULL on error. */
static uint8_t* read_file(const char* path, size_t* len) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t* buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            uint8_t* grown = realloc(buf, cap);
            if (!grown) { free(buf); fclose(f); return NULL; }
            buf = grown;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); return NULL; }
    *len = n;
    return buf;
}

static const char* finish_name(int32_t reason) {
    switch (reason) {
    case OCRVL_FINISH_NONE: return "none";
    case OCRVL_FINISH_STOP: return "stop";
    case OCRVL_FINISH_LENGTH: return "length";
    case OCRVL_FINISH_CANCELLED: return "cancelled";
    case OCRVL_FINISH_FAILED: return "failed";
    default: return "unknown";
    }
}

static int task_from_name(const char* s) {
    if (strcmp(s, "ocr") == 0) return OCRVL_TASK_OCR;
    if (strcmp(s, "table") == 0) return OCRVL_TASK_TABLE;
    if (strcmp(s, "formula") == 0) return OCRVL_TASK_FORMULA;
    if (strcmp(s, "chart") == 0) return OCRVL_TASK_CHART;
    if (strcmp(s, "spotting") == 0) return OCRVL_TASK_SPOTTING;
    if (strcmp(s, "seal") == 0) return OCRVL_TASK_SEAL;
    return -1;
}

static int usage(void) {
    fprintf(stderr, "usage: ocr_image [--model DIR] [--synthetic-dir DIR] [--task ocr|table|formula|chart|spotting|seal] [--prompt TEXT] [--device N]\n"
                    "                 [--max-model-len N] [--max-num-seqs N] [--gpu-memory-utilization F]\n"
                    "                 [--max-tokens N] IMAGE\n");
    return 2;
}

/* Streams the request's events to stdout; the token text buffer starts small and grows on
 * OCRVL_BUFFER_TOO_SMALL, which shows the retry protocol (the event is kept until it fits). */
static ocrvl_status stream(ocrvl_request* req) {
    size_t cap = 16;
    char* text = malloc(cap);
    if (!text) return OCRVL_INTERNAL;
    ocrvl_token_event ev;
    memset(&ev, 0, sizeof ev);
    ev.struct_size = sizeof ev;
    for (;;) {
        ocrvl_status st = ocrvl_request_next(req, -1, &ev, text, cap);
        if (st == OCRVL_BUFFER_TOO_SMALL) {
            char* grown = realloc(text, ev.text_len + 1);
            if (!grown) { free(text); return OCRVL_INTERNAL; }
            text = grown;
            cap = ev.text_len + 1;
            continue;
        }
        if (st != OCRVL_OK) { free(text); return st; }
        fwrite(text, 1, ev.text_len, stdout);
        fflush(stdout);
        if (ev.kind == OCRVL_EVENT_DONE) break;
    }
    free(text);
    return OCRVL_OK;
}

int main(int argc, char** argv) {
    ocrvl_engine_config config;
    ocrvl_engine_config_default(&config);
    ocrvl_sampling_params sampling;
    ocrvl_sampling_params_default(&sampling);
    int task = OCRVL_TASK_OCR;
    const char* prompt = NULL;
    const char* image_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strncmp(a, "--", 2) != 0) {
            if (image_path) return usage();
            image_path = a;
            continue;
        }
        if (!v) return usage();
        i++;
        if (strcmp(a, "--model") == 0) config.model_dir = v;
        else if (strcmp(a, "--synthetic-dir") == 0) config.synthetic_dir = v;
        else if (strcmp(a, "--device") == 0) config.device = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--max-model-len") == 0) config.max_model_len = strtoull(v, NULL, 10);
        else if (strcmp(a, "--max-num-seqs") == 0) config.max_num_seqs = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--gpu-memory-utilization") == 0) config.gpu_memory_utilization = strtod(v, NULL);
        else if (strcmp(a, "--max-tokens") == 0) sampling.max_tokens = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--task") == 0) {
            if ((task = task_from_name(v)) < 0) return usage();
        } else if (strcmp(a, "--prompt") == 0) {
            prompt = v;
            task = OCRVL_TASK_PROMPT;
        } else return usage();
    }
    if (!image_path) return usage();
    if (ocrvl_abi_version() != OCRVL_ABI_VERSION) {
        fprintf(stderr, "ocr_image: built for ABI %u, linked with %u\n", OCRVL_ABI_VERSION, ocrvl_abi_version());
        return 1;
    }

    size_t image_len = 0;
    uint8_t* image = read_file(image_path, &image_len);
    if (!image) {
        fprintf(stderr, "ocr_image: cannot read %s\n", image_path);
        return 1;
    }

    int rc = 1;
    ocrvl_engine* engine = NULL;
    ocrvl_request* req = NULL;
    char* final_text = NULL;
    ocrvl_status st = ocrvl_engine_create(&config, &engine);
    if (st != OCRVL_OK) { rc = fail("ocrvl_engine_create", st); goto out; }

    /* The library copies the image during the call: `image` could be freed right after. */
    const uint8_t* images[1] = {image};
    size_t lens[1] = {image_len};
    st = ocrvl_submit(engine, images, lens, 1, task, prompt, &sampling, &req);
    if (st != OCRVL_OK) { rc = fail("ocrvl_submit", st); goto out; }

    st = stream(req);
    if (st != OCRVL_OK) { rc = fail("ocrvl_request_next", st); goto out; }

    /* The final text: ask for its length, then read it into a buffer of that size + 1. */
    size_t len = 0;
    st = ocrvl_request_text(req, NULL, 0, &len);
    if (st != OCRVL_OK && st != OCRVL_BUFFER_TOO_SMALL) { rc = fail("ocrvl_request_text", st); goto out; }
    final_text = malloc(len + 1);
    if (!final_text) goto out;
    st = ocrvl_request_text(req, final_text, len + 1, &len);
    if (st != OCRVL_OK) { rc = fail("ocrvl_request_text", st); goto out; }

    ocrvl_request_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    st = ocrvl_request_get_info(req, &info);
    if (st != OCRVL_OK) { rc = fail("ocrvl_request_get_info", st); goto out; }

    printf("\n--- final text (%zu bytes) ---\n%s\n", len, final_text);
    printf("--- finish: %s, prompt tokens %llu, completion tokens %llu ---\n", finish_name(info.finish_reason),
           (unsigned long long)info.prompt_tokens, (unsigned long long)info.completion_tokens);
    rc = 0;

out:
    free(final_text);
    ocrvl_request_free(req);     /* NULL is fine */
    ocrvl_engine_destroy(engine); /* NULL is fine */
    free(image);
    return rc;
}
