"""Schemathesis hooks for .ci/run (loaded through SCHEMATHESIS_HOOKS)."""

import schemathesis


@schemathesis.hook
def before_load_schema(context, raw_schema):
    # The submission endpoints also take JSONL (`application/x-ndjson`: one JSON object a
    # line, options in the query string). The document can only describe that body as a
    # string, so schemathesis would send arbitrary strings and count their refusal as
    # drift. Only that media type is dropped; its form is tested by tests/api/jsonl.rs
    # and tests/api/edge_input.rs.
    for methods in raw_schema.get("paths", {}).values():
        for operation in methods.values():
            content = (operation.get("requestBody") or {}).get("content", {})
            content.pop("application/x-ndjson", None)
