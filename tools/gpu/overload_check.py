#!/usr/bin/env python3
"""Overload checks against a running `serve` (issue 15: one request can never hurt another).

    python3 overload_check.py --base-url http://127.0.0.1:18100 --metrics-url http://127.0.0.1:18101 \
        --pid SERVE_PID [--rss-bound-gib 3]

Needs only the standard library (PNGs are written with zlib). Three phases, one PASS/FAIL
line each, exit 1 if any failed; about 1-3 minutes in all:

  big-images  300 concurrent requests, each one 9000x9000 (81 Mpx) flat-colour PNG (~0.3 MB
              encoded), together with 64 concurrent 4000x4000 ones (16 Mpx, just inside the
              default cap of 16 x the processor's max_pixels, so they are really decoded).
              Every request must be answered 200, 400 or 503 (no connection lost, no 500), the
              81 Mpx ones must never be 200 (the header check refuses them), and the server's
              peak RSS (VmHWM from /proc/PID/status) must stay within --rss-bound-gib GiB above
              its RSS before the phase. The bound: decodes run one per core, each holds at most
              ~16 Mpx x (3 B decoded + 3 B RGB copy + resize buffers) ~ 150 MB, so 16 cores are
              ~2.4 GB at worst; 3 GiB leaves room for allocator slack. Before this change 32
              such 81 Mpx PNGs took the server from 2.3 to 12.1 GB.
  burst       1500 small requests at once: every one answered 200 or 503 (503s carry
              Retry-After), none lost; afterwards the server's in-flight gauge is back to 0.
  dropped     64 streams that the client closes after their first chunks: the engine's KV
              blocks in use and running requests return to 0, and /health is still 200.

Start the server first, e.g. (64 sequences: --max-pending-requests defaults to 4 x 64 = 256):
    serve --host 127.0.0.1 --port 18100 --metrics-port 18101 --max-model-len 4096 \
        --max-num-seqs 64 --gpu-memory-utilization 0.5 > serve_overload.log 2>&1 &
Without --base-url (as tools/gpu_run.sh calls every tools/*.py) it prints SKIP and exits 0.
"""
import argparse
import base64
import http.client
import json
import socket
import struct
import sys
import threading
import time
import urllib.parse
import zlib


def png(width, height, rgb):
    """A flat-colour RGB PNG, compressed row by row (never the whole raster in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    z = zlib.compressobj(9)
    parts = [z.compress(row) for _ in range(height)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def text_png():
    """A small page-like image (dark bars on white)."""
    w, h = 224, 160
    raw = bytearray()
    for y in range(h):
        raw.append(0)
        for x in range(w):
            v = 20 if (y // 6) % 3 == 0 and (x // 4) % 5 != 0 else 250
            raw += bytes((v, v, v))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")


def body(image, max_tokens, stream=False, model=None, extra=None):
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    b = {
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri}},
            {"type": "text", "text": "OCR:"},
        ]}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if model:
        b["model"] = model
    if extra:
        b.update(extra)
    return json.dumps(b).encode()


class Target:
    def __init__(self, base_url, metrics_url):
        u = urllib.parse.urlparse(base_url)
        self.host, self.port = u.hostname, u.port or 80
        m = urllib.parse.urlparse(metrics_url or base_url)
        self.mhost, self.mport = m.hostname, m.port or 80

    def post(self, payload, timeout=300):
        """(status, retry_after, body) or (None, None, error text) when the connection failed."""
        try:
            c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            c.request("POST", "/v1/chat/completions", body=payload, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            c.close()
            return r.status, r.getheader("Retry-After"), data
        except Exception as e:  # a lost request: reported, never raised
            return None, None, repr(e).encode()

    def get(self, path, metrics=False):
        c = http.client.HTTPConnection(self.mhost if metrics else self.host, self.mport if metrics else self.port, timeout=30)
        c.request("GET", path)
        r = c.getresponse()
        data = r.read().decode()
        c.close()
        return r.status, data

    def metric(self, name):
        _, text = self.get("/metrics", metrics=True)
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def run_concurrent(target, payloads):
    results = [None] * len(payloads)
    start = threading.Barrier(len(payloads))

    def one(i):
        try:
            start.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass
        results[i] = target.post(payloads[i])

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def wait_metric(target, name, want, seconds=60):
    deadline = time.time() + seconds
    value = None
    while time.time() < deadline:
        value = target.metric(name)
        if value == want:
            return value
        time.sleep(0.2)
    return value


def big_images(target, pid, bound_gib):
    t0 = time.time()
    huge = body(png(9000, 9000, (200, 30, 30)), 4)
    large = body(png(4000, 4000, (30, 30, 200)), 4)
    rss0 = status_kib(pid, "VmRSS")
    hwm0 = status_kib(pid, "VmHWM")
    payloads = [huge] * 300 + [large] * 64
    results = run_concurrent(target, payloads)
    hwm1 = status_kib(pid, "VmHWM")
    codes = {}
    lost, huge_ok, bad = 0, 0, []
    for i, (status, _, data) in enumerate(results):
        codes[status] = codes.get(status, 0) + 1
        if status is None:
            lost += 1
        elif status not in (200, 400, 503):
            bad.append((status, data[:200]))
        elif status == 200 and i < 300:
            huge_ok += 1
    grew_gib = (hwm1 - rss0) / 2**20
    ok = lost == 0 and not bad and huge_ok == 0 and (hwm1 <= hwm0 or grew_gib <= bound_gib)
    detail = (f"answers {codes}, lost {lost}, 81 Mpx answered 200: {huge_ok}; RSS before {rss0 / 2**20:.2f} GiB, "
              f"peak (VmHWM) {hwm1 / 2**20:.2f} GiB (+{grew_gib:.2f}, bound {bound_gib} GiB; HWM before "
              f"{hwm0 / 2**20:.2f}); {time.time() - t0:.1f} s")
    if bad:
        detail += f"; unexpected: {bad[:3]}"
    return ok, detail


def burst(target, model):
    t0 = time.time()
    payload = body(text_png(), 8, model=model)
    results = run_concurrent(target, [payload] * 1500)
    codes = {}
    lost, no_retry, bad = 0, 0, []
    for status, retry, data in results:
        codes[status] = codes.get(status, 0) + 1
        if status is None:
            lost += 1
            bad.append(data[:120])
        elif status == 503 and not retry:
            no_retry += 1
        elif status not in (200, 503):
            bad.append((status, data[:200]))
    in_flight = wait_metric(target, "ocrvl_http_requests_in_flight", 0, 60)
    ok = lost == 0 and no_retry == 0 and not bad and codes.get(200, 0) > 0 and in_flight == 0
    detail = f"answers {codes}, lost {lost}, 503 without Retry-After {no_retry}, in flight after {in_flight}; {time.time() - t0:.1f} s"
    if bad:
        detail += f"; unexpected: {bad[:3]}"
    return ok, detail


def dropped_streams(target, model):
    t0 = time.time()
    payload = body(text_png(), 2000, stream=True, model=model, extra={"ignore_eos": True})
    got_chunks = [0] * 64

    def one(i):
        try:
            s = socket.create_connection((target.host, target.port), timeout=120)
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n").encode()
            s.sendall(head + payload)
            seen = b""
            while seen.count(b"data: ") < 3:
                data = s.recv(65536)
                if not data:
                    break
                seen += data
            got_chunks[i] = seen.count(b"data: ")
            s.close()  # the client goes away mid-stream
        except Exception:
            got_chunks[i] = -1

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = wait_metric(target, "ocrvl_kv_blocks_used", 0, 60)
    running = wait_metric(target, "ocrvl_requests_running", 0, 30)
    in_flight = wait_metric(target, "ocrvl_http_requests_in_flight", 0, 30)
    health, _ = target.get("/health")
    streamed = sum(1 for c in got_chunks if c >= 3)
    ok = streamed == 64 and used == 0 and running == 0 and in_flight == 0 and health == 200
    return ok, (f"{streamed}/64 streams got 3+ chunks before closing; KV blocks used after {used}, running "
                f"{running}, in flight {in_flight}, /health {health}; {time.time() - t0:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url")
    ap.add_argument("--metrics-url")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--rss-bound-gib", type=float, default=3.0)
    args = ap.parse_args()
    if not args.base_url or not args.pid:
        print("SKIP overload_check: needs --base-url and --pid of a running serve")
        return 0
    target = Target(args.base_url, args.metrics_url)
    status, models = target.get("/v1/models")
    model = json.loads(models)["data"][0]["id"] if status == 200 else None
    failed = False
    for name, check in [
        ("big-images", lambda: big_images(target, args.pid, args.rss_bound_gib)),
        ("burst", lambda: burst(target, model)),
        ("dropped", lambda: dropped_streams(target, model)),
    ]:
        try:
            ok, detail = check()
        except Exception as e:
            ok, detail = False, f"raised {e!r}"
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
