#!/usr/bin/env python3
"""Requests/s through batchforge's OpenAI-compatible Batch API (/v1/files, /v1/batches)
against a scripted OpenAI-protocol upstream that answers every chat completion after
--latency-ms (0: at once). Standard library only.

    python3 tests/llm/bench_facade.py --binary target/release/batchforge \
        --requests 20000 --latency-ms 0
    python3 tests/llm/bench_facade.py --binary target/release/batchforge \
        --requests 5000 --latency-ms 50 --llm-concurrency 64

The rate is the batch's job's own timestamps: requests / (completed_at - started_at), so
upload and polling are not in it. The facade runs each batch at parallel 64; the
server's --llm-concurrency bounds requests in flight at the upstream.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}).encode()


def start_upstream(latency):
    """A keep-alive HTTP/1.1 server on 127.0.0.1:0 in a thread; returns (port, counter)."""
    count = [0]
    ready = threading.Event()
    port = [0]

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if latency:
                    await asyncio.sleep(latency)
                count[0] += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port[0] = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()
    ready.wait()
    return port[0], count


def call(base, method, path, body=None, content_type="application/json"):
    req = urllib.request.Request(base + path, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=600) as resp:
        data = resp.read()
    return json.loads(data) if data[:1] in (b"{", b"[") else data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/batchforge")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--llm-concurrency", type=int, default=64)
    args = ap.parse_args()

    port, count = start_upstream(args.latency_ms / 1000.0)
    work = tempfile.mkdtemp(prefix="bf-llm-bench-")
    server = subprocess.Popen(
        [args.binary, "serve", "--bind", "127.0.0.1:0", "--workspace", work,
         "--database-url", f"sqlite://{work}/jobs.db",
         "--llm-url", f"http://127.0.0.1:{port}", "--llm-api", "openai",
         "--llm-concurrency", str(args.llm_concurrency)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        base = line.strip().rsplit(" ", 1)[-1]
        lines = "".join(
            json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "bench",
                                 "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n"
            for i in range(args.requests))
        boundary = "benchBoundary7f"
        form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n"
                f"{lines}\r\n--{boundary}--\r\n").encode()
        f = call(base, "POST", "/v1/files", form, f"multipart/form-data; boundary={boundary}")
        b = call(base, "POST", "/v1/batches", json.dumps(
            {"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
             "completion_window": "24h"}).encode())
        while b["status"] not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.2)
            b = call(base, "GET", f"/v1/batches/{b['id']}")
        job = call(base, "GET", f"/batch/jobs/{b['job_id']}")
        seconds = job["completed_at"] - job["started_at"]
        rate = args.requests / seconds
        ideal = (args.llm_concurrency / (args.latency_ms / 1000.0)) if args.latency_ms else None
        print(f"| {args.requests} | {args.latency_ms:g} ms | {args.llm_concurrency} | "
              f"{seconds:.2f} s | {rate:,.0f} | "
              f"{'%.0f %%' % (100 * rate / ideal) if ideal else '-'} | "
              f"{b['request_counts']['completed']}/{b['request_counts']['total']} ok, "
              f"upstream saw {count[0]} |")
        if b["status"] != "completed" or b["request_counts"]["completed"] != args.requests:
            print(f"batch did not complete whole: {b}", file=sys.stderr)
            return 1
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
