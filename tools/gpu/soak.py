#!/usr/bin/env python3
"""Soak test: minutes of random traffic against `serve`, then the books are checked.

    python3 soak.py --base-url http://127.0.0.1:8000 [--pid PID] [--minutes 8]
    python3 soak.py --serve BIN_DIR/serve [--minutes 8] [--port 18100]   # starts serve itself

With --serve it starts `serve` on the synthetic model (as tools/gpu/server_check.sh does),
waits for /health, soaks, and stops it with SIGTERM; otherwise it uses a running server and
samples the RSS of --pid (without --pid, RSS is not checked).

Traffic (--concurrency workers, each sending one request after another until the time is up):
  chat       images (PIL, else zlib PNGs: synthetic pages of 3 sizes, PNG or JPEG; some reused, so the prefix
             cache hits) or text only, max_tokens 1..256, answered whole
  stream     the same, streamed (SSE) to [DONE]
  abort      streamed, the connection closed after a few chunks (deliberately dropped)
  disconnect answered whole, the connection closed before the answer (deliberately dropped)
  invalid    a body that must be refused with a 4xx (bad JSON, wrong types, n=2, bad image,
             unknown model, max_tokens -5 or 10^9)
10% of the valid requests sample (temperature 0.8, top_p 0.95, a seed), the rest are greedy.

Checks at the end (a table; exit 1 if any FAIL):
  - requests sent = answered + deliberately dropped (none lost: no reset, timeout or
    half-answer on a request that was not dropped on purpose);
  - valid requests answered 200 with finish_reason stop/length (503 with Retry-After counts as
    answered: overload is a legal answer), streams complete with [DONE];
  - invalid bodies answered 4xx (never 200, never 5xx);
  - /metrics: ocrvl_kv_blocks_used = 0 and nothing running or waiting once traffic stops;
  - RSS (VmRSS of the server, sampled every 10 s) net of the preprocessed-image cache
    (ocrvl_mm_cache_bytes, bounded by --mm-processor-cache-gb): first sample after --warmup-s
    vs the last; flat means last - first <= max(--rss-slack-mb, --rss-slack-pct of first RSS).
The server's own count of finished requests (ocrvl_requests_total) is printed for reference.
"""
import argparse
import base64
import http.client
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib


def zlib_png(rng, size):
    """The same kind of page as a PNG written with zlib alone (for a host without Pillow)."""
    w, h = size
    rows = []
    for y in range(h):
        on = (y // 8) % 3 == 0
        shade = rng.randint(0, 60)
        row = bytearray([0])
        for x in range(w):
            v = shade if on and (x // 5) % 6 != 0 else 250
            row += bytes([v, v, v])
        rows.append(bytes(row))

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(data).decode()


def page_image(rng, size, fmt):
    """A synthetic page: dark text-like bars on white, some noise; encoded as PNG or JPEG."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return zlib_png(rng, size)

    w, h = size
    img = Image.new("RGB", (w, h), (250, 250, 250))
    d = ImageDraw.Draw(img)
    y = rng.randint(4, 20)
    while y < h - 10:
        x = rng.randint(4, 30)
        line_h = rng.randint(6, 14)
        while x < w - 20:
            word = rng.randint(10, 80)
            shade = rng.randint(0, 60)
            d.rectangle([x, y, min(x + word, w - 5), y + line_h], fill=(shade, shade, shade))
            x += word + rng.randint(4, 14)
        y += line_h + rng.randint(6, 18)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


SIZES = [(320, 160), (800, 600), (1600, 1200)]


class Books:
    """Counters shared by the workers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}
        self.notes = []

    def add(self, key, n=1):
        with self.lock:
            self.c[key] = self.c.get(key, 0) + n

    def note(self, text):
        with self.lock:
            if len(self.notes) < 20:
                self.notes.append(text)

    def get(self, key):
        return self.c.get(key, 0)


def metrics(base):
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def requests_total(m):
    return sum(v for k, v in m.items() if k.startswith("ocrvl_requests_total{"))


class Traffic:
    def __init__(self, args, base, model, books):
        self.args = args
        u = urllib.parse.urlparse(base)
        self.host, self.port = u.hostname, u.port or 80
        self.model = model
        self.books = books
        rng = random.Random(args.seed)
        # A pool of images (reused: prefix-cache hits) plus fresh ones made on the fly, as
        # (size index, data URI).
        self.pool = []
        for i in range(12):
            size = i % len(SIZES)
            self.pool.append((size, page_image(rng, SIZES[size], rng.choice(["PNG", "JPEG"]))))

    def body(self, rng):
        content = []
        r = rng.random()
        if r < 0.75:
            # Two images only of the smaller sizes: the prompt stays within a 4096-token
            # --max-model-len (a 1600x1200 page is about 2450 tokens).
            count = 2 if rng.random() < 0.1 else 1
            sizes = range(len(SIZES) - 1) if count == 2 else range(len(SIZES))
            for _ in range(count):
                size = rng.choice(sizes)
                if rng.random() < 0.7:
                    url = rng.choice([u for s, u in self.pool if s == size])
                else:
                    url = page_image(rng, SIZES[size], rng.choice(["PNG", "JPEG"]))
                content.append({"type": "image_url", "image_url": {"url": url}})
            content.append({"type": "text", "text": rng.choice(["OCR:", "Table Recognition:", "Formula Recognition:"])})
            messages = [{"role": "user", "content": content}]
        else:
            text = " ".join(rng.choice(["alpha", "beta", "表格", "公式", "🙂", "word"]) for _ in range(rng.randint(1, 200)))
            messages = [{"role": "user", "content": text}]
        b = {"model": self.model, "messages": messages, "max_tokens": rng.randint(1, 256)}
        if rng.random() < 0.10:
            b.update(temperature=0.8, top_p=0.95, seed=rng.randint(1, 1 << 30))
        else:
            b["temperature"] = 0
        return b

    def invalid_body(self, rng):
        good = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        choices = [
            b"{not json",
            b"",
            json.dumps({**good, "messages": "x"}).encode(),
            json.dumps({**good, "n": 2}).encode(),
            json.dumps({**good, "max_tokens": -5}).encode(),
            json.dumps({**good, "max_tokens": 10 ** 9}).encode(),
            json.dumps({**good, "temperature": "hot"}).encode(),
            json.dumps({**good, "model": "no-such-model"}).encode(),
            json.dumps({**good, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "OCR:"}]}]}).encode(),
        ]
        return rng.choice(choices)

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.args.request_timeout)

    def send(self, conn, payload):
        conn.request("POST", "/v1/chat/completions", body=payload, headers={"Content-Type": "application/json"})

    def worker(self, wid, deadline):
        rng = random.Random(self.args.seed * 1000 + wid)
        while time.time() < deadline:
            kind = rng.choices(["chat", "stream", "abort", "disconnect", "invalid"], [35, 35, 10, 5, 15])[0]
            self.books.add("sent")
            self.books.add(f"sent_{kind}")
            try:
                getattr(self, "do_" + kind)(rng)
            except Exception as e:  # noqa: BLE001 - every unexpected failure is a lost request
                self.books.add("lost")
                self.books.add(f"lost_{kind}")
                self.books.note(f"{kind}: {e!r}")

    def answered(self, kind, status, ok, detail=""):
        self.books.add("answered")
        if status == 503:
            self.books.add("answered_503")
        elif ok:
            self.books.add(f"ok_{kind}")
        else:
            self.books.add("unexpected")
            self.books.note(f"{kind}: HTTP {status} {detail[:160]}")

    def do_chat(self, rng):
        conn = self.connect()
        try:
            self.send(conn, json.dumps(self.body(rng)).encode())
            r = conn.getresponse()
            data = r.read()
            ok = False
            if r.status == 200:
                j = json.loads(data)
                ok = j["choices"][0]["finish_reason"] in ("stop", "length") and j["usage"]["completion_tokens"] >= 1
            elif r.status == 503:
                ok = r.getheader("Retry-After") is not None
            self.answered("chat", r.status, ok, data.decode(errors="replace"))
        finally:
            conn.close()

    def read_stream(self, r, stop_after=None):
        """Reads SSE events; returns (events, saw_done, finish_reason, error_event)."""
        events, done, finish, error = 0, False, None, None
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            payload = line[6:]
            if payload == b"[DONE]":
                done = True
                break
            events += 1
            j = json.loads(payload)
            if "error" in j:
                error = j["error"]
            for c in j.get("choices", []):
                finish = c.get("finish_reason") or finish
            if stop_after is not None and events >= stop_after:
                break
        return events, done, finish, error

    def do_stream(self, rng):
        conn = self.connect()
        try:
            b = self.body(rng)
            b["stream"] = True
            self.send(conn, json.dumps(b).encode())
            r = conn.getresponse()
            if r.status != 200:
                data = r.read()
                self.answered("stream", r.status, r.status == 503 and r.getheader("Retry-After") is not None,
                              data.decode(errors="replace"))
                return
            events, done, finish, error = self.read_stream(r)
            ok = done and error is None and finish in ("stop", "length")
            self.answered("stream", 200, ok, f"done={done} finish={finish} error={error}")
        finally:
            conn.close()

    def do_abort(self, rng):
        conn = self.connect()
        try:
            b = self.body(rng)
            b["stream"] = True
            b["max_tokens"] = rng.randint(64, 256)
            self.send(conn, json.dumps(b).encode())
            r = conn.getresponse()
            if r.status != 200:
                data = r.read()
                self.answered("abort", r.status, r.status == 503 and r.getheader("Retry-After") is not None,
                              data.decode(errors="replace"))
                return
            _, done, _, _ = self.read_stream(r, stop_after=rng.randint(1, 4))
            if done:  # finished before we could drop it: an ordinary answer
                self.answered("abort", 200, True)
            else:
                self.books.add("dropped")
        finally:
            conn.close()

    def do_disconnect(self, rng):
        conn = self.connect()
        try:
            self.send(conn, json.dumps(self.body(rng)).encode())
            time.sleep(rng.uniform(0.05, 1.0))
        finally:
            conn.close()
        self.books.add("dropped")

    def do_invalid(self, rng):
        conn = self.connect()
        try:
            self.send(conn, self.invalid_body(rng))
            r = conn.getresponse()
            data = r.read()
            self.answered("invalid", r.status, 400 <= r.status < 500, data.decode(errors="replace"))
        finally:
            conn.close()


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_serve(args):
    cmd = [args.serve, "--host", "127.0.0.1", "--port", str(args.port), "--max-model-len", "4096",
           "--max-num-seqs", str(args.max_num_seqs), "--gpu-memory-utilization", str(args.gpu_memory_utilization),
           "--mm-processor-cache-gb", str(args.mm_processor_cache_gb)]
    log = open(os.path.join(args.logdir, "soak_serve.log"), "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{args.port}"
    for _ in range(1200):
        if p.poll() is not None:
            sys.exit(f"serve exited with {p.returncode}; see soak_serve.log")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return p, base
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    p.kill()
    sys.exit("serve did not become healthy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="the server, e.g. http://127.0.0.1:8000 (no /v1)")
    ap.add_argument("--pid", type=int, help="the server's process id, for RSS")
    ap.add_argument("--serve", help="path of a `serve` binary to start on the synthetic model")
    ap.add_argument("--port", type=int, default=18100)
    ap.add_argument("--max-num-seqs", type=int, default=32, help="with --serve")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                    help="with --serve; lower it when other servers share the GPU")
    ap.add_argument("--mm-processor-cache-gb", type=float, default=0.25,
                    help="with --serve: the preprocessed-image cache. It grows with the fresh images "
                         "until its bound, which is RSS the flatness check would count: the default "
                         "fills during the warm-up (measured on an H200, 2026-12-06: with vLLM's 4 GiB "
                         "default the RSS rose 2.9 GB in the first 4 minutes of traffic)")
    ap.add_argument("--concurrency", type=int, default=24)
    ap.add_argument("--warmup-s", type=float, default=90.0, help="RSS baseline: the first sample after this")
    ap.add_argument("--rss-slack-mb", type=float, default=256.0)
    ap.add_argument("--rss-slack-pct", type=float, default=10.0)
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--logdir", default=os.environ.get("OUT", "/tmp"))
    args = ap.parse_args()
    os.makedirs(args.logdir, exist_ok=True)

    proc = None
    if args.serve:
        proc, base = start_serve(args)
        pid = proc.pid
    elif args.base_url:
        base, pid = args.base_url.rstrip("/"), args.pid
    else:
        # As tools/gpu_run.sh may call any tools/*.py without arguments.
        print("SKIP soak: give --base-url (a running server) or --serve (a binary to start)")
        return 0

    with urllib.request.urlopen(base + "/v1/models", timeout=10) as r:
        model = json.load(r)["data"][0]["id"]
    books = Books()
    traffic = Traffic(args, base, model, books)
    before = metrics(base)
    t0 = time.time()
    deadline = t0 + args.minutes * 60

    # (seconds since start, RSS MB, preprocessed-image cache MB from /metrics). The cache is
    # bounded by --mm-processor-cache-gb and fills with fresh images: the flatness check is on
    # RSS net of it, and both are reported.
    samples = []
    stop_sampling = threading.Event()

    def cache_mb():
        try:
            return metrics(base).get("ocrvl_mm_cache_bytes", 0.0) / 2**20
        except Exception:
            return 0.0

    def sample():
        while not stop_sampling.is_set():
            if pid is not None:
                v = rss_mb(pid)
                if v is not None:
                    samples.append((time.time() - t0, v, cache_mb()))
            stop_sampling.wait(10)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    workers = [threading.Thread(target=traffic.worker, args=(i, deadline)) for i in range(args.concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    traffic_s = time.time() - t0

    # Quiet: the engine must drain, every block back.
    settle = time.time()
    m = metrics(base)
    while time.time() - settle < 60:
        m = metrics(base)
        if (m.get("ocrvl_kv_blocks_used", -1) == 0 and m.get("ocrvl_requests_running", 0) == 0
                and m.get("ocrvl_requests_waiting", 0) == 0):
            break
        time.sleep(0.5)
    settle_s = time.time() - settle
    stop_sampling.set()
    sampler.join()
    if pid is not None:
        v = rss_mb(pid)
        if v is not None:
            samples.append((time.time() - t0, v, cache_mb()))

    rows = []

    def row(check, ok, detail):
        rows.append((check, ok, detail))

    g = books.get
    sent, answered, dropped, lost = g("sent"), g("answered"), g("dropped"), g("lost")
    row("sent = answered + dropped", "PASS" if sent == answered + dropped and lost == 0 else "FAIL",
        f"sent {sent} = {answered} answered + {dropped} dropped; {lost} lost")
    valid_ok = g("ok_chat") + g("ok_stream") + g("ok_abort")
    row("valid answered 200/503", "PASS" if g("unexpected") == 0 else "FAIL",
        f"chat {g('ok_chat')}/{g('sent_chat')}, stream {g('ok_stream')}/{g('sent_stream')}, 503s {g('answered_503')}, "
        f"unexpected {g('unexpected')}")
    row("invalid bodies 4xx", "PASS" if g("ok_invalid") == g("sent_invalid") - g("lost_invalid") else "FAIL",
        f"{g('ok_invalid')} of {g('sent_invalid')} refused with 4xx")
    used = m.get("ocrvl_kv_blocks_used")
    row("KV blocks used = 0", "PASS" if used == 0 else "FAIL",
        f"used {used} of {m.get('ocrvl_kv_blocks_total')} after {settle_s:.1f} s; running "
        f"{m.get('ocrvl_requests_running')}, waiting {m.get('ocrvl_requests_waiting')}")
    # The whole series, for a look at its shape (seconds, RSS MB, image cache MB).
    with open(os.path.join(args.logdir, "soak_rss.tsv"), "w") as f:
        f.write("t_s\trss_mb\tmm_cache_mb\n")
        f.writelines(f"{t:.0f}\t{v:.1f}\t{c:.1f}\n" for t, v, c in samples)
    after = [s for s in samples if s[0] >= args.warmup_s]
    if pid is None:
        row("RSS flat after warm-up", "SKIP", "no --pid")
    elif len(after) < 2:
        row("RSS flat after warm-up", "FAIL", f"only {len(after)} samples after {args.warmup_s:.0f} s")
    else:
        net = [(t, v - c) for t, v, c in after]
        first, last = net[0][1], net[-1][1]
        peak = max(v for _, v, _ in samples)
        bound = max(args.rss_slack_mb, after[0][1] * args.rss_slack_pct / 100)
        # Least-squares slope of the net RSS over the samples after warm-up, MB per minute.
        n = len(net)
        mx = sum(t for t, _ in net) / n
        my = sum(v for _, v in net) / n
        var = sum((t - mx) ** 2 for t, _ in net)
        slope = 60 * sum((t - mx) * (v - my) for t, v in net) / var if var > 0 else 0.0
        row("RSS flat after warm-up", "PASS" if last - first <= bound else "FAIL",
            f"net of the image cache: first after {after[0][0]:.0f} s {first:.0f} MB, last {last:.0f} MB "
            f"({last - first:+.0f}, bound {bound:.0f}), slope {slope:+.1f} MB/min; RSS {after[0][1]:.0f} -> "
            f"{after[-1][1]:.0f} MB (max {peak:.0f}), image cache {after[0][2]:.0f} -> {after[-1][2]:.0f} MB; "
            f"{len(samples)} samples")
    counted = requests_total(m) - requests_total(before)
    row("server count (info)", "INFO",
        f"ocrvl_requests_total +{counted:.0f} vs {valid_ok} valid answered + {dropped} dropped; "
        f"{traffic_s:.0f} s of traffic, {sent / max(traffic_s, 1):.1f} req/s")

    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            row("serve exit after SIGTERM", "FAIL", "still running after 60 s")

    for n in books.notes:
        print("note:", n)
    print(f"| {'check':<26} | {'ok':<4} | detail |")
    for check, ok, detail in rows:
        print(f"| {check:<26} | {ok:<4} | {detail} |")
    return 1 if any(ok == "FAIL" for _, ok, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
