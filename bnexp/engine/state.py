"""The training state of one run (:class:`TrainingState`): what the loop advances and listeners read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from bnexp.engine.checkpoint import Progress
from bnexp.engine.ranks import Ranks
from bnexp.store.run import Run


@dataclass
class TrainingState:
    """One run's training state, as the loop advances it and listeners read it."""

    cfg: DictConfig
    model: torch.nn.Module  # what the step calls (a DistributedDataParallel wrapper with nproc > 1)
    module: torch.nn.Module  # the model itself: its state dict, its norm sites
    data: object  # bnexp.data.datasets.DataBundle
    optimizer: torch.optim.Optimizer
    scheduler: object
    progress: Progress
    total_steps: int
    epochs: int
    min_batch: int  # a smaller last batch of an epoch is dropped (smallest_batch)
    started: float  # perf_counter() at the start, minus the time earlier sessions of the run took
    compile_s: float = 0.0
    epoch: int = 0  # the epoch being trained, from 1
    hist_due: bool = False  # this step's forward/backward should be captured for histograms
    run: Optional[Run] = None  # rank 0's; None on the other ranks, which keep no run and no listeners
    ranks: Ranks = field(default_factory=Ranks)  # this process among the data-parallel ones (one: rank 0 of 1)
    hist_every_steps: int = 0  # cfg.hist_every_steps, as a plain int (an OmegaConf read costs ~20 us)
    listeners: Any = None  # everything watching this run: engine.callbacks.Callbacks (set by run_loop)

    @property
    def device(self) -> torch.device:
        return self.data.train_x.device
