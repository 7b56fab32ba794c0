"""Alpaca: `instruction`, optional `input`, `output` (Stanford Alpaca, Code Alpaca, alpaca-libre)."""

from sftpipe.io.schemas.base import Converted, exchange, orig_id, provenance, text_field

FIELDS = ("instruction", "output")


def convert(row: dict) -> list[Converted]:
    instruction = text_field(row, "instruction")
    context = text_field(row, "input", required=False)
    prompt = f"{instruction}\n\n{context}" if context.strip() else instruction
    meta = provenance(row)
    if context.strip():
        # Kept apart so the alpaca template can render `### Input:` exactly.
        meta["alpaca_input"] = context
    return [(orig_id(row), exchange(prompt, text_field(row, "output")), meta)]
