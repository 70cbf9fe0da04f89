"""The trainer entry point, :func:`train`: one run from its config to its record, in one process
or as a rank of several (:mod:`bnexp.launch.multiproc`). It opens or creates the run
(:mod:`bnexp.store.run`), builds what the loop needs and attaches the listeners."""

from __future__ import annotations

import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from bnexp.config.compose import dataset_settings
from bnexp.core.errors import BnexpError, Interrupted
from bnexp.engine.callbacks import Callback, Callbacks, record_or_raise
from bnexp.engine.loop import (
    TrainingState,
    epoch_batches,
    failure,
    resolve_device,
    run_loop,
    smallest_batch,
    stop_message,
)
from bnexp.engine.ranks import CpuClock, Ranks, auto_threads, in_worker, joined
from bnexp.launch.multiproc import launch
from bnexp.store.files import CHECKPOINT_FILE, CONFIG_FILE, OVERRIDES_FILE, write_atomic
from bnexp.store.record import RunRecord
from bnexp.store.run import Run, create_run
from bnexp.tracking.listeners import Checkpointer, ProgressBar, RunLog


def train(cfg: DictConfig, overrides: list[str], *, run_dir: Optional[Path] = None, resume: Optional[Path] = None,
          progress: bool = True, callbacks: Iterable[Callback] = ()) -> Optional[RunRecord]:
    """Train one run to completion; returns its record (``record.dir`` is its directory).

    ``run_dir``: an existing empty directory to use (a sweep job's); ``resume``: a run directory to
    continue from its checkpoint, with ``cfg`` its saved config (longer ``epochs``/``max_steps``
    extend it). Raises :class:`Diverged` on a non-finite loss, :class:`Interrupted` on Ctrl-C or
    SIGTERM, and BnexpError for bad input found while loading.

    With ``nproc`` > 1 this process launches that many workers and waits for them
    (:mod:`bnexp.launch.multiproc`); in a worker it trains as one rank, and ranks other than 0 return None.
    """
    if (cfg.nproc > 1 or cfg.nnodes > 1) and not in_worker():
        return launch(cfg, overrides, run_dir=run_dir, resume=resume, progress=progress, callbacks=callbacks)
    with joined(cfg, resolve_device(cfg.device.type)) as ranks:
        return train_rank(cfg, overrides, ranks, run_dir=run_dir, resume=resume, progress=progress,
                          callbacks=callbacks)


def train_rank(cfg: DictConfig, overrides: list[str], ranks: Ranks, *, run_dir: Optional[Path],
               resume: Optional[Path], progress: bool, callbacks: Iterable[Callback]) -> Optional[RunRecord]:
    """:func:`train` in this process, as rank ``ranks.rank`` of ``ranks.size``: every rank builds the
    same model and sees its shard of each batch; rank 0 alone keeps the run and its listeners."""
    from bnexp.data.datasets import load_dataset
    from bnexp.engine.rebuild import rebuild

    lead = ranks.rank == 0
    opened = Run.open(resume) if resume is not None and lead else None  # first: a busy run is refused early
    try:
        clock = CpuClock()  # what other processes use while this run is set up: see auto_threads
        device = ranks.device
        torch.manual_seed(cfg.seed)
        data = load_dataset(dataset_settings(cfg), device)
        min_batch = smallest_batch(cfg)
        steps_per_epoch = len(epoch_batches(len(data.train_x), cfg.batch_size, cfg.seed, 0, min_batch))
        if steps_per_epoch == 0:
            where = f" with nproc={cfg.nproc}" if cfg.nproc > 1 else ""
            raise BnexpError(f"dataset {data.name} has {len(data.train_x)} training example(s); "
                             f"{f'norm={cfg.norm.kind}' if min_batch > 1 else 'training'}{where} needs >= {min_batch}")
        total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
        built = rebuild(cfg, data, device, total_steps, Path(resume) / CHECKPOINT_FILE if resume is not None else None)
        module, optimizer, scheduler, state, sync_note = (built.module, built.optimizer, built.scheduler,
                                                          built.progress, built.sync_note)
        if resume is not None:
            from bnexp.store.resume import already_trained

            already_trained(Path(resume), state.step, state.epoch, total_steps, cfg.epochs)
        threads_choice = choose_threads(cfg, ranks, device, clock)
        model = ranks.wrap(module)
    except BaseException:
        if opened is not None:
            opened.close()  # the run's record is left exactly as it was
        raise
    if sync_note and lead:
        from bnexp.core.errors import error_line

        error_line(sync_note, prefix="note")
    execution = {**ranks.describe(), "threads_choice": threads_choice,
                 **({"norm_sync": sync_note} if sync_note else {})}
    run = (opened or create_run(cfg, overrides, run_dir, str(device), {**reproducibility(device), **execution})) if lead else None
    loop = TrainingState(cfg=cfg, model=model, module=module, data=data, optimizer=optimizer, scheduler=scheduler,
                progress=state, total_steps=total_steps, epochs=math.ceil(total_steps / steps_per_epoch),
                min_batch=min_batch, run=run, ranks=ranks, hist_every_steps=int(cfg.hist_every_steps),
                started=time.perf_counter() - (run.record.duration_s if run else 0.0))
    resumed_at = state.step if opened is not None else None
    try:
        listeners = [*run_listeners(cfg, overrides, run, module, resumed_at, progress), *callbacks] if run else []
    except KeyboardInterrupt:  # SIGTERM/Ctrl-C while the listeners start (TensorBoard's import takes a while)
        if run is None:
            raise
        message = stop_message(loop)
        if opened is None:
            run.finish("interrupted", message)
        run.close()
        raise Interrupted(message) from None
    except Exception as exc:  # a listener could not start (a full disk): the run says so, never looks alive
        if run is None:
            raise
        message = failure(loop, exc)
        note = run.finish("failed", message) if opened is None else None  # a resumed run's record stays as it was
        run.close()
        raise BnexpError(message + (f"; {note}" if note else "")) from exc
    outcome = run_loop(loop, Callbacks(listeners))
    return record_or_raise(outcome, run.path if run else None, run.record if run else None)


def choose_threads(cfg: DictConfig, ranks: Ranks, device: torch.device, clock: CpuClock) -> str:
    """Set torch's CPU threads (``threads=N``, or :func:`auto_threads` for a single process on
    CPU) and say how they were chosen, for the run's reproducibility record."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        return f"threads={cfg.threads}"
    if ranks.size > 1:
        return "the cores shared out between the local processes"
    if device.type != "cpu":
        return "torch's default (the model runs on the GPU)"
    threads, why = auto_threads(clock)
    torch.set_num_threads(threads)
    return why


def run_listeners(cfg: DictConfig, overrides: list[str], run: Run, module, resumed_at: Optional[int],
                  progress: bool) -> list[Callback]:
    """Everything that watches a run (rank 0's alone): its record, checkpoint, telemetry into the
    ``logger``'s sinks, diagnostics, progress bar. ``resumed_at``: the checkpoint's step, for a continued run."""
    from bnexp.tracking.diagnostics import diagnostics
    from bnexp.tracking.sinks import Measurements, Publishing, open_sinks
    from bnexp.tracking.telemetry import Telemetry

    resumed = resumed_at is not None
    listeners = [RunLog(run, resumed=resumed)]
    if resumed:
        listeners.append(_ConfigRefresh(cfg, overrides))
    if cfg.checkpoint:
        listeners.append(Checkpointer(run.path / CHECKPOINT_FILE, OmegaConf.to_container(cfg, resolve=True)))
    out = Measurements(run, open_sinks(run, cfg, resumed_at))  # probes measure into it; sinks write
    # listeners end in reverse: the probes first, then Publishing (the sinks' final metrics, close)
    listeners += [Publishing(out), Telemetry(cfg, module, out), *diagnostics(cfg, module, out)]
    if progress:
        listeners.append(ProgressBar(resumed=resumed))
    return listeners


def reproducibility(device: torch.device) -> dict:
    """What it takes to run this again: command line, code version, software, machine."""
    import bnexp

    info = {"command": shlex.join(["bnexp", *sys.argv[1:]]), "cwd": os.getcwd(),
            "python": platform.python_version(), "torch": torch.__version__, "bnexp": bnexp.__version__,
            "host": socket.gethostname(), "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=5)
            info.update(git_commit=commit.stdout.strip(), git_dirty=bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return info


class _ConfigRefresh(Callback):
    """A continued run that trains longer saves its new length (config.yaml, overrides, record)."""

    def __init__(self, cfg: DictConfig, overrides: list[str]):
        self.cfg, self.overrides = cfg, overrides

    def on_start(self, loop):
        run, cfg = loop.run, self.cfg
        if (run.record.epochs, run.record.max_steps) != (cfg.epochs, cfg.max_steps):
            write_atomic(run.path / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
            write_atomic(run.path / OVERRIDES_FILE, OmegaConf.to_yaml(OmegaConf.create(list(self.overrides))))
            run.record.epochs, run.record.max_steps, run.record.overrides = cfg.epochs, cfg.max_steps, self.overrides
            run.save()
