"""Databricks Dolly: `instruction`, `context`, `response`, `category`; the context joins the user turn."""

from sftpipe.io.schemas.base import Converted, exchange, orig_id, provenance, text_field

FIELDS = ("instruction", "response")


def convert(row: dict) -> list[Converted]:
    instruction = text_field(row, "instruction")
    context = text_field(row, "context", required=False)
    prompt = f"{instruction}\n\n{context}" if context.strip() else instruction
    meta = provenance(row)
    if context.strip():
        meta["alpaca_input"] = context
    return [(orig_id(row), exchange(prompt, text_field(row, "response")), meta)]
