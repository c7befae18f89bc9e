#!/usr/bin/env python3
"""RSS of `serve` around one large JSON body on POST /batch/jobs (issue 18 item 5).

usage: python3 bench/memory/big_body.py ITEMS PAD_BYTES [BATCHFORGE]
e.g.   python3 bench/memory/big_body.py 10000 26000        # a 260 MB body of 10,000 items

Starts `serve --noop-processor` on a fresh SQLite file, samples VmRSS every 20 ms from
before the submission until the job has completed and 1 s after, and prints the body
size, the peak and the RSS after.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

items, pad = int(sys.argv[1]), int(sys.argv[2])
binary = sys.argv[3] if len(sys.argv) > 3 else "target/debug/batchforge"
work = tempfile.mkdtemp()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
base = f"http://127.0.0.1:{port}"
server = subprocess.Popen(
    [binary, "serve", "--noop-processor", "--bind", f"127.0.0.1:{port}",
     "--database-url", f"sqlite://{work}/jobs.db", "--workspace", work],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rss_mib():
    with open(f"/proc/{server.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


try:
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/health")
            break
        except OSError:
            time.sleep(0.1)
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    start = rss_mib()
    sampler.start()
    body = json.dumps({"type": "noop", "items": [
        {"custom_id": str(i), "p": "x" * pad} for i in range(items)]}).encode()
    size = len(body) / 1e6
    request = urllib.request.Request(f"{base}/batch/jobs", data=body,
                                     headers={"content-type": "application/json"})
    del body
    job = json.load(urllib.request.urlopen(request, timeout=600))
    while json.load(urllib.request.urlopen(
            f"{base}/batch/jobs/{job['job_id']}"))["status"] not in ("completed", "failed"):
        time.sleep(0.5)
    time.sleep(1)
    done.set()
    sampler.join()
    print(f"body {size:.1f} MB  RSS at start {start:.0f} MiB  peak {peak[0]:.0f} MiB  "
          f"after {rss_mib():.0f} MiB")
finally:
    server.terminate()
    server.wait()
