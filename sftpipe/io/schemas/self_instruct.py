"""Self-instruct tasks: `instruction` + `instances[]` of `{input, output}`, one example per instance."""

from sftpipe.io.schemas.base import Converted, Drop, exchange, list_field, orig_id, provenance, text_field

FIELDS = ("instruction", "instances")


def convert(row: dict) -> list[Converted]:
    instruction = text_field(row, "instruction")
    instances = list_field(row, "instances")
    if not instances:
        raise Drop("no_instances")
    base, meta = orig_id(row), provenance(row)
    out: list[Converted] = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise Drop("wrong_type", f"instance {i} is {type(inst).__name__}")
        context = text_field(inst, "input", required=False)
        prompt = f"{instruction}\n\n{context}" if context.strip() else instruction
        inst_meta = {**meta, "alpaca_input": context} if context.strip() else dict(meta)
        out.append((f"{base}/{i}" if base else None, exchange(prompt, text_field(inst, "output")), inst_meta))
    return out
