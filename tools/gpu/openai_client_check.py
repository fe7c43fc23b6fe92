#!/usr/bin/env python3
"""Checks a running `serve` with the official `openai` Python client; starts nothing itself.

    python3 openai_client_check.py --base-url http://127.0.0.1:8000/v1 [--model NAME]
    python3 openai_client_check.py --print-data-uri     # a small PNG as a data: URI (for curl)

Prints one PASS/FAIL/SKIP line per check and exits 1 if any failed:
  models      models.list() names the served model
  chat        a chat request with a base64 PNG image completes, with usage
  stream      the same request streamed: role first, deltas, finish_reason, usage chunk;
              greedy, so the deltas spell exactly the non-streamed text
  errors      an unknown model is NotFoundError (404), a bad image BadRequestError (400)
Without --base-url (as tools/gpu_run.sh calls every tools/*.py) or without the `openai`
package it prints a SKIP line and exits 0. The PNG is written with zlib alone (no Pillow).
"""
import argparse
import base64
import struct
import sys
import zlib


def png(width=160, height=96):
    """Dark bars on white, a little like lines of text."""
    rows = []
    for y in range(height):
        on = (y // 6) % 3 == 0
        row = bytearray([0])  # filter type 0
        for x in range(width):
            v = 20 if on and (x // 4) % 5 != 0 else 250
            row += bytes([v, v, v])
        rows.append(bytes(row))

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def data_uri(data):
    return "data:image/png;base64," + base64.b64encode(data).decode()


def messages(url, text="OCR:"):
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": text},
    ]}]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="the server's /v1 URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--model", help="served model name (default: the first of /v1/models)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--print-data-uri", action="store_true", help="print a small PNG data: URI and exit")
    args = ap.parse_args()
    if args.print_data_uri:
        print(data_uri(png()))
        return 0
    if not args.base_url:
        print("SKIP openai_client_check: no --base-url (tools/gpu/server_check.sh starts a server and passes it)")
        return 0
    try:
        import openai
    except ImportError as e:
        print(f"SKIP openai_client_check: the `openai` package is not importable ({e}); bring its wheels")
        return 0

    client = openai.OpenAI(base_url=args.base_url, api_key="EMPTY", max_retries=0, timeout=600)
    failures = 0

    def report(name, ok, detail):
        nonlocal failures
        failures += 0 if ok else 1
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    try:
        names = [m.id for m in client.models.list().data]
        model = args.model or names[0]
        report("models", model in names, f"served {names}")
    except Exception as e:  # noqa: BLE001 - every failure is a FAIL line
        report("models", False, repr(e))
        return 1

    image = data_uri(png())
    text = None
    try:
        r = client.chat.completions.create(model=model, messages=messages(image), temperature=0,
                                           max_tokens=args.max_tokens)
        text = r.choices[0].message.content
        u = r.usage
        ok = (isinstance(text, str) and r.choices[0].finish_reason in ("stop", "length")
              and u.prompt_tokens > 0 and 0 < u.completion_tokens <= args.max_tokens
              and u.total_tokens == u.prompt_tokens + u.completion_tokens)
        report("chat", ok, f"finish={r.choices[0].finish_reason} usage={u.prompt_tokens}+{u.completion_tokens} "
                           f"text={text[:40]!r}")
    except Exception as e:  # noqa: BLE001
        report("chat", False, repr(e))

    try:
        stream = client.chat.completions.create(model=model, messages=messages(image), temperature=0,
                                                max_tokens=args.max_tokens, stream=True,
                                                stream_options={"include_usage": True})
        parts, roles, finish, usage, n = [], [], None, None, 0
        for chunk in stream:
            n += 1
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.role:
                    roles.append(c.delta.role)
                if c.delta.content:
                    parts.append(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
        streamed = "".join(parts)
        ok = (roles[:1] == ["assistant"] and finish in ("stop", "length") and usage is not None
              and (text is None or streamed == text))
        report("stream", ok, f"{n} chunks, finish={finish}, usage={usage and usage.completion_tokens}, "
                             f"same text as chat: {streamed == text}")
    except Exception as e:  # noqa: BLE001
        report("stream", False, repr(e))

    try:
        client.chat.completions.create(model="no-such-model", messages=messages(image), max_tokens=4)
        report("errors", False, "an unknown model was accepted")
    except openai.NotFoundError:
        try:
            client.chat.completions.create(model=model, messages=messages("data:image/png;base64,AAAA"),
                                           max_tokens=4)
            report("errors", False, "a bad image was accepted")
        except openai.BadRequestError as e:
            report("errors", True, f"404 unknown model, 400 bad image ({e.message[:60]!r})")
        except Exception as e:  # noqa: BLE001
            report("errors", False, repr(e))
    except Exception as e:  # noqa: BLE001
        report("errors", False, repr(e))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
