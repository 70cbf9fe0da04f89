"""Rebuilding a run in memory: the one way the trainer (new and continued runs, a sweep's resumed
jobs) and ``bnexp recalibrate`` turn a run's config, and its checkpoint when there is one, into the
model, optimizer and scheduler it trains with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from bnexp.engine.checkpoint import Progress, load_checkpoint, restore
from bnexp.engine.loop import build_optimizer, build_scheduler
from bnexp.nn.models import build_model
from bnexp.nn.norms import synchronize_norms


@dataclass
class Rebuilt:
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    progress: Progress = field(default_factory=Progress)  # where the checkpoint left off (a new run: nothing yet)
    sync_note: Optional[str] = None  # how synchronized statistics are provided, when bnexp stands in for torch


def rebuild(cfg: DictConfig, data, device: torch.device, total_steps: int, checkpoint: Optional[Path] = None, *,
            synchronize: bool = True) -> Rebuilt:
    """The model (on ``device``, its norms synchronized when ``norm.sync`` and ``synchronize``), its
    optimizer and a scheduler over ``total_steps``; restored from ``checkpoint`` when given (the
    scheduler's saved state, T_max included, replaces the new one's)."""
    module = build_model(cfg.model, cfg.norm, data.in_channels, data.image_size, data.num_classes).to(device)
    sync_note = synchronize_norms(module, cfg.norm, device) if synchronize else None
    optimizer = build_optimizer(cfg.optimizer, module.parameters())
    scheduler = build_scheduler(cfg.optimizer, optimizer, total_steps)
    progress = Progress()
    if checkpoint is not None:
        progress = restore(load_checkpoint(checkpoint, device), module, optimizer, scheduler)
    return Rebuilt(module, optimizer, scheduler, progress, sync_note)
