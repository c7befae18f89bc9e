#!/usr/bin/env python3
"""Times a validation batch of N `true` commands through a release `batchforge serve`
against `xargs -P` running the same commands, and prints a table.

    cargo build --release && python3 scripts/bench_commands.py [N] [PARALLEL]
"""
import json, os, subprocess, sys, tempfile, time, urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
P = int(sys.argv[2]) if len(sys.argv) > 2 else os.cpu_count()
BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "batchforge")


def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req) as r:
        return json.load(r)


with tempfile.TemporaryDirectory() as tmp:
    ws = os.path.join(tmp, "ws")
    os.mkdir(ws)
    open(os.path.join(ws, "f"), "w").close()
    server = subprocess.Popen(
        [BIN, "serve", "--bind", "127.0.0.1:0", "--workspace", ws,
         "--database-url", f"sqlite://{tmp}/bench.db", "--concurrency", str(P)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        base = server.stdout.readline().strip().split()[-1]
        targets = [{"id": f"t{i}", "path": "f"} for i in range(N)]
        t0 = time.perf_counter()
        job = call("POST", f"{base}/batch/validation",
                   {"targets": targets, "check_command": "true", "parallel": P})
        submitted = time.perf_counter() - t0
        while True:
            j = call("GET", f"{base}/batch/jobs/{job['job_id']}")
            if j["status"] in ("completed", "failed", "cancelled") and j["result"]:
                break
            time.sleep(0.02)
        engine = time.perf_counter() - t0
        assert j["result"]["summary"]["successful"] == N, j["result"]["summary"]
    finally:
        server.terminate()
        server.wait()
    t0 = time.perf_counter()
    subprocess.run(["xargs", "-P", str(P), "-n1", "true"], input="\n".join(["f"] * N),
                   text=True, check=True)
    xargs = time.perf_counter() - t0

print(f"{N} validation items running `true`, parallel = concurrency = {P}, {os.cpu_count()} cores")
print(f"| {'runner':<28} | {'seconds':>8} | {'items/s':>9} |")
print(f"|{'-' * 30}|{'-' * 10}|{'-' * 11}|")
print(f"| {'batchforge (submit)':<28} | {submitted:>8.3f} | {'':>9} |")
print(f"| {'batchforge (submit→done)':<28} | {engine:>8.3f} | {N / engine:>9.0f} |")
print(f"| {'xargs -P':<28} | {xargs:>8.3f} | {N / xargs:>9.0f} |")
print(f"batchforge / xargs time ratio: {engine / xargs:.2f}")
