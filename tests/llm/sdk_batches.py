#!/usr/bin/env python3
"""Drives batchforge's /v1 Batch API with the official `openai` SDK, unchanged but for
base_url. Run by tests/api/llm_batches.rs against a scripted upstream that answers
"answer to TEXT", refuses "refuse" with a 400, waits 30 s on "slow", and whose route for
models named dead-* leads nowhere. Exits non-zero (an AssertionError) on any mismatch.

    BATCHFORGE_URL=http://127.0.0.1:PORT python3 tests/llm/sdk_batches.py
"""

import io
import json
import os
import time

from openai import OpenAI

client = OpenAI(base_url=os.environ["BATCHFORGE_URL"] + "/v1",
                api_key=os.environ.get("BATCHFORGE_TOKEN", "unused"), max_retries=0)


def line(custom_id, text, model="llama3.2"):
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "messages": [{"role": "user", "content": text}]}})


def upload(lines, name="input.jsonl"):
    data = ("\n".join(lines) + "\n").encode()
    f = client.files.create(file=(name, io.BytesIO(data)), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(data), f
    return f


def wait(batch_id, statuses, limit=60):
    deadline = time.time() + limit
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in statuses:
            return b
        assert time.time() < deadline, f"batch {batch_id} still {b.status}"
        time.sleep(0.1)


def jsonl(file_id):
    return [json.loads(l) for l in client.files.content(file_id).text.splitlines() if l]


def create(file_id):
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata={"suite": "sdk"})


# Upload, create, poll, download the output and error files.
f = upload([line("r1", "one"), line("r2", "refuse"), line("r3", "three")])
assert client.files.retrieve(f.id).filename == "input.jsonl"
assert f.id in [x.id for x in client.files.list().data]
b = create(f.id)
assert b.object == "batch" and b.input_file_id == f.id and b.metadata == {"suite": "sdk"}, b
b = wait(b.id, {"completed", "failed"})
assert b.status == "completed", b
assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (3, 2, 1), b
out = {l["custom_id"]: l for l in jsonl(b.output_file_id)}
assert set(out) == {"r1", "r3"}, out
assert out["r1"]["response"]["status_code"] == 200
assert out["r1"]["response"]["body"]["choices"][0]["message"]["content"] == "answer to one"
errors = jsonl(b.error_file_id)
assert [e["custom_id"] for e in errors] == ["r2"], errors
assert errors[0]["response"]["status_code"] == 400, errors

# A malformed line fails the batch with its line number.
bad = upload([line("a", "x"), "{not json", line("b", "y")])
failed = create(bad.id)
assert failed.status == "failed", failed
assert [e.line for e in failed.errors.data] == [2], failed.errors

# An unreachable upstream: each request errors, the batch completes with an error file.
dead = upload([line("d1", "x", model="dead-model"), line("d2", "y", model="dead-model")])
b = wait(create(dead.id).id, {"completed", "failed"})
assert b.status == "completed" and b.output_file_id is None, b
assert sorted(e["custom_id"] for e in jsonl(b.error_file_id)) == ["d1", "d2"]
assert all(e["error"]["code"] == "upstream_unreachable" for e in jsonl(b.error_file_id))

# Cancel: finished requests stay in the output, the rest go to the error file.
slow = upload([line("fast", "quick"), line("s1", "slow"), line("s2", "slow")])
b = create(slow.id)
deadline = time.time() + 30
while client.batches.retrieve(b.id).request_counts.completed < 1:
    assert time.time() < deadline, "the fast request never finished"
    time.sleep(0.1)
c = client.batches.cancel(b.id)
assert c.status in ("cancelling", "cancelled"), c
b = wait(b.id, {"cancelled"})
assert [l["custom_id"] for l in jsonl(b.output_file_id)] == ["fast"]
assert sorted(e["custom_id"] for e in jsonl(b.error_file_id)) == ["s1", "s2"]

# List with paging: four batches so far, newest first.
page = client.batches.list(limit=2)
assert len(page.data) == 2 and page.has_more, page
seen = [x.id for x in page.data]
while page.has_next_page():
    page = page.get_next_page()
    seen += [x.id for x in page.data]
assert len(seen) == 4 and len(set(seen)) == len(seen), seen
assert [x.id for x in client.batches.list(limit=100).data] == seen

# Delete a file.
assert client.files.delete(f.id).deleted
try:
    client.files.retrieve(f.id)
    raise AssertionError("the deleted file is still there")
except Exception as e:  # openai.NotFoundError
    assert type(e).__name__ == "NotFoundError", e

print("sdk ok:", len(seen), "batches")
