"""Schemathesis hooks for .ci/run (loaded through SCHEMATHESIS_HOOKS)."""

import sys

import hypothesis.errors
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


# schemathesis 4.1.4 marks a phase failed, and exits non-zero, when Hypothesis raises one of
# its Flaky errors, yet reports "No issues found" and not which error it was. Each is named
# here on stderr with its causes, so the run log says what happened and .ci/run can tell an
# error of the tool itself (retried once) from a response that failed a check once and not
# on replay (a FlakyFailure with that check among its causes: a real failure).
def _announce(kind, original):
    def init(self, *args, **kwargs):
        detail = args[0] if args else ""
        causes = args[1] if len(args) > 1 else []
        print(f"hypothesis raised {kind}: {str(detail)[:300]}", file=sys.stderr)
        for cause in causes:
            print(f"  cause: {cause!r}"[:2000], file=sys.stderr)
        original(self, *args, **kwargs)

    return init


hypothesis.errors.FlakyStrategyDefinition.__init__ = _announce(
    "FlakyStrategyDefinition", hypothesis.errors.FlakyStrategyDefinition.__init__
)
hypothesis.errors.FlakyFailure.__init__ = _announce(
    "FlakyFailure", hypothesis.errors.FlakyFailure.__init__
)
