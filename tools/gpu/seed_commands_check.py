#!/usr/bin/env python3
"""Starts `serve` with each documented deployment command line (tests/fixtures/command_lines.txt)
on the GPU host, one after another, and checks what each must give (issue 14):

- `# expect: start ...`: the server comes up (/health 200 on the command's own --port), answers
  one PaddleX-style region request under the first served name the entry expects with 200,
  and exits 0 on SIGTERM;
- `# expect: error FLAG`: serve exits non-zero before serving, and its output names FLAG.

The program part (`vllm serve`, `python -m MODULE`) is dropped as tests/cpu/command_lines.rs
drops it; `export` lines of an entry become the command's environment. Model ids resolve from
the hub cache that HF_HOME points at (prepare_hf_cache.sh lays it out; HF_HUB_OFFLINE=1 is set
so nothing is downloaded); absolute model directories named by the commands (PaddleX's and
GPUStack's) are made links to --model-dir first.

    python3 seed_commands_check.py --serve BIN/serve --fixture tests/fixtures/command_lines.txt \
        --model-dir SYNTH_DIR --hf-home /tmp/hf [--logdir DIR]

Prints one PASS/FAIL line per entry and exits 1 if any failed.
"""
import argparse
import base64
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
import struct


def png(width=320, height=48):
    """A line of dark bars on white: the size of a cropped text line."""
    rows = b"".join(
        b"\x00" + b"".join(bytes([20 if (y // 8) % 2 == 0 and (x // 5) % 4 else 250] * 3) for x in range(width))
        for y in range(height)
    )

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def entries(text):
    """(source, expect words, env, argv) per fixture entry, argv without the program part."""
    out = []
    for block in text.split("\n\n"):
        source, expect, env, command = "", [], {}, []
        for line in block.splitlines():
            if line.startswith("# source: "):
                source = line[len("# source: "):]
            elif line.startswith("# expect: "):
                expect = line[len("# expect: "):].split()
            elif line.startswith("#") or not line.strip():
                continue
            elif line.startswith("export "):
                name, _, value = line[len("export "):].partition("=")
                env[name] = shlex.split(value)[0] if value else ""
            else:
                command.append(line.rstrip().removesuffix("\\"))
        if not expect:
            continue
        line = " ".join(command)
        for name, value in env.items():
            line = line.replace("${" + name + "}", value).replace("$" + name, value)
        words = shlex.split(line)
        if words[0] == "vllm":
            words = words[2:]
        elif words[0] in ("python", "python3"):
            words = words[3:]
        out.append((source, expect, env, words))
    return out


def flag_value(argv, name, default=None):
    for i, w in enumerate(argv):
        if w == name and i + 1 < len(argv):
            return argv[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return default


def positional_or_model(argv):
    m = flag_value(argv, "--model")
    if m:
        return m
    return argv[0] if argv and not argv[0].startswith("-") else None


def get(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def chat(base, model, image_uri):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_uri}},
            {"type": "text", "text": "OCR:"}]}],
        "temperature": 0, "max_completion_tokens": 16, "skip_special_tokens": True,
        "mm_processor_kwargs": {"min_pixels": 112896, "max_pixels": 1003520},
    }
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer null"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--model-dir", required=True, help="the directory every absolute model path is linked to")
    ap.add_argument("--hf-home", required=True)
    ap.add_argument("--logdir", default=os.environ.get("OUT", "/tmp"))
    ap.add_argument("--start-timeout", type=float, default=120.0)
    args = ap.parse_args()
    image_uri = "data:image/png;base64," + base64.b64encode(png()).decode()
    failed = 0
    log = open(os.path.join(args.logdir, "seed_commands.log"), "w")
    for n, (source, expect, env, argv) in enumerate(entries(open(args.fixture).read())):
        model = positional_or_model(argv)
        if model and model.startswith("/") and not os.path.exists(model):
            os.makedirs(os.path.dirname(model), exist_ok=True)
            os.symlink(args.model_dir, model)
        environ = dict(os.environ, HF_HOME=args.hf_home, HF_HUB_OFFLINE="1", **env)
        port = int(flag_value(argv, "--port", "8000"))
        base = f"http://127.0.0.1:{port}"
        t0 = time.time()
        print(f"=== entry {n}: {source}\n    serve {' '.join(argv)}", file=log, flush=True)
        proc = subprocess.Popen([args.serve] + argv, env=environ, stdout=log, stderr=subprocess.STDOUT)
        verdict, detail = "FAIL", ""
        if expect[0] == "error":
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = None
            log.flush()
            text = open(log.name).read().split(f"=== entry {n}:")[-1]
            if rc not in (None, 0) and expect[1] in text:
                verdict, detail = "PASS", f"exit {rc}, names {expect[1]}"
            else:
                detail = f"exit {rc}; output names {expect[1]}: {expect[1] in text}"
        else:
            ready = False
            while time.time() - t0 < args.start_timeout and proc.poll() is None:
                if get(base + "/health")[0] == 200:
                    ready = True
                    break
                time.sleep(0.5)
            if not ready:
                detail = f"not ready (exit {proc.poll()}) after {time.time() - t0:.0f} s"
            else:
                # The name PaddleX's pipeline sends, where the entry serves it.
                names = [n for w in expect if w.startswith("names=") for n in w.split("=", 1)[1].split(",")]
                name = "PaddleOCR-VL-0.9B" if "PaddleOCR-VL-0.9B" in names else (names or [model])[0]
                code, body = chat(base, name, image_uri)
                print(f"    chat as {name}: {code} {body[:300]!r}", file=log, flush=True)
                detail = f"ready in {time.time() - t0:.1f} s, chat as {name!r}: {code}"
                if code == 200:
                    verdict = "PASS"
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = "killed"
                if rc != 0:
                    verdict, detail = "FAIL", detail + f"; exit {rc} after SIGTERM"
        failed += verdict == "FAIL"
        print(f"{verdict} seed {n}: {detail} [{source[:70]}]")
        sys.stdout.flush()
    print(f"seed commands: {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
