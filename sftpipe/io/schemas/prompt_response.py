"""Single exchanges under common field pairs: prompt/response, prompt/completion, question/answer,
input/output (first pair present wins), with an optional `system`."""

from sftpipe.io.schemas.base import Converted, Drop, exchange, orig_id, provenance, text_field

PAIRS = (("prompt", "response"), ("prompt", "completion"), ("question", "answer"), ("input", "output"))


def matches(row: dict) -> bool:
    return any(p in row and r in row for p, r in PAIRS)


def convert(row: dict) -> list[Converted]:
    for p, r in PAIRS:
        if p in row and r in row:
            msgs = exchange(text_field(row, p), text_field(row, r), text_field(row, "system", required=False))
            return [(orig_id(row), msgs, provenance(row))]
    raise Drop("missing_field", "none of " + ", ".join(f"{p}/{r}" for p, r in PAIRS))
