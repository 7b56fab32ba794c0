"""Token losses of rows under a causal LM, batched by length: what evaluate reports and what
distill's grounding gate compares (a response's likelihood with and without its passage)."""

from __future__ import annotations

from collections.abc import Iterator

from sftpipe.core.progress import bar


def _batches(model, rows, batch_size: int, pad_id: int, device: str, desc: str) -> Iterator[tuple]:
    """(row indices, per-position losses, label mask) per batch; batches hold rows of similar length
    (less padding to compute). Position t of the losses scores token t + 1."""
    import torch
    import torch.nn.functional as F

    all_ids, all_labels = list(rows["input_ids"]), list(rows["labels"])  # one read of each column
    order = sorted(range(len(all_ids)), key=lambda i: len(all_ids[i]))
    model.eval()
    for start in bar(range(0, len(order), batch_size), desc=desc, unit="batch"):
        batch = order[start : start + batch_size]
        width = max(len(all_ids[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for i, (x, y) in enumerate((all_ids[j], all_labels[j]) for j in batch):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
        loss = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), reduction="none"
        ).view(shift_labels.shape)
        yield batch, loss, shift_labels != -100


def token_losses(
    model, rows, batch_size: int, pad_id: int, device: str, desc: str = "scoring"
) -> list[tuple[float, int]]:
    """(summed loss, trained tokens) per row of `rows` (a dataset, or a dict of lists, with
    input_ids and labels), in row order."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows["input_ids"])
    for batch, loss, scored in _batches(model, rows, batch_size, pad_id, device, desc):
        for k, (s, n) in enumerate(zip(loss.sum(-1).tolist(), scored.sum(-1).tolist(), strict=True)):
            out[batch[k]] = (s, n)
    return out


def each_token_loss(
    model, rows, batch_size: int, pad_id: int, device: str, desc: str = "scoring"
) -> list[list[float]]:
    """The loss of every labelled token of each row (in order), in row order: what a per-token
    comparison of two rows needs."""
    out: list[list[float]] = [[] for _ in range(len(rows["input_ids"]))]
    for batch, loss, scored in _batches(model, rows, batch_size, pad_id, device, desc):
        for k in range(len(batch)):
            out[batch[k]] = loss[k][scored[k]].tolist()
    return out
