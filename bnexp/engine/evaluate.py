"""Scoring a model on a dataset: with running statistics, or with each batch's own."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate(model, data, x_all, y_all, batch_size: int, batch_stats: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy. BN normalizes with its running statistics (eval mode), or
    with each evaluation batch's own statistics when ``batch_stats`` (train mode, running statistics
    saved and put back, so evaluating leaves no trace)."""
    loss_sum, correct = evaluation_sums(model, data, x_all, y_all, batch_size, batch_stats)
    n = max(len(x_all), 1)
    return loss_sum.item() / n, correct.item() / n


@torch.no_grad()
def evaluation_sums(model, data, x_all, y_all, batch_size: int,
                    batch_stats: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and the number of correct predictions, as device tensors (see :func:`evaluate`).
    With ``batch_stats`` a last batch of one example joins the one before: BN cannot normalize a
    single example by its own statistics."""
    saved = {k: v.clone() for k, v in model.state_dict().items()} if batch_stats else None
    model.train(batch_stats)
    loss_sum = torch.zeros((), device=x_all.device)
    correct = torch.zeros((), device=x_all.device, dtype=torch.long)
    bounds = [*range(0, len(x_all), batch_size), len(x_all)]
    if batch_stats and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    for start, end in zip(bounds, bounds[1:]):
        x = data.normalize(x_all[start:end])
        y = y_all[start:end]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    if saved is not None:
        model.load_state_dict(saved)
    model.train()
    return loss_sum, correct
