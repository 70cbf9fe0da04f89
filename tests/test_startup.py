"""Start-up and per-step work that the speed of ``bnexp`` rests on (issue 18): behaviour, not timings
(those are in scripts/bench_startup.py and scripts/bench_train.py)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

from bnexp import cli
from bnexp.core.errors import BnexpError
from bnexp.engine.callbacks import Callback, Callbacks


def _modules_loaded_by(args: list[str], env: dict) -> set[str]:
    """The modules a real ``bnexp ARGS`` process has imported when it exits."""
    code = ("import sys\nfrom bnexp import cli\nsys.argv = ['bnexp', *sys.argv[1:]]\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                            timeout=120)
    line = next(line for line in result.stderr.splitlines() if line.startswith("MODULES "))
    return set(line.split()[1:])


def test_command_table_names_every_command():
    """COMMAND_MODULES (what lets a command import only its own module) lists exactly the commands
    each module registers."""
    import typer

    import bnexp.commands as commands

    registered = {}
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        app = typer.Typer()
        importlib.import_module(f"bnexp.commands.{info.name}").register(app)
        registered.update({c.name: info.name for c in app.registered_commands})
    assert registered == cli.COMMAND_MODULES


def test_a_command_imports_only_its_own_module(tmp_path):
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(tmp_path / "outputs"), "COLUMNS": "120"}
    loaded = _modules_loaded_by(["runs"], env)
    assert "bnexp.commands.runs" in loaded
    others = {m for m in loaded if m.startswith("bnexp.commands.") and not m.startswith("bnexp.commands._")}
    assert others == {"bnexp.commands.runs"}
    assert "torch" not in loaded and "hydra" not in loaded
    help_loaded = _modules_loaded_by(["--help"], env)
    assert {"bnexp.commands.train", "bnexp.commands.runs"} <= help_loaded  # help lists every command
    assert "torch" not in help_loaded


def test_help_lists_commands_in_order_after_a_command_ran():
    """Registering one command first (as running it does) leaves --help's order unchanged."""
    cli._register_commands(["runs"])
    cli._register_commands(["--help"])
    names = [c.name for c in cli.app.registered_commands]
    assert names.index("train") < names.index("sweep") < names.index("runs") < names.index("show")
    assert len(names) == len(set(names))


class _Counting(Callback):
    def __init__(self):
        self.steps = 0

    def on_step(self, loop):
        self.steps += 1


def test_only_listeners_with_an_on_step_are_called_each_step():
    counting, silent = _Counting(), Callback()
    listeners = Callbacks([silent, counting])
    listeners.on_start(None)
    assert listeners.stepping == [counting]
    listeners.on_step(None)
    assert counting.steps == 1
    wrapped = Callback()
    calls = []
    wrapped.on_step = lambda loop: calls.append(loop)  # a hook set on the instance (a benchmark's timer)
    listeners = Callbacks([wrapped])
    listeners.on_start(None)
    listeners.on_step("loop")
    assert calls == ["loop"]


def test_train_batch_equals_normalizing_the_gathered_batch(monkeypatch):
    import torch

    import bnexp.data.datasets as datasets

    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    bundle = datasets.DataBundle("t", images, torch.zeros(50, dtype=torch.long), images[:5], torch.zeros(5),
                                 10, torch.full((1, 1, 1, 1), 33.3), torch.full((1, 1, 1, 1), 77.7))
    index = torch.tensor([3, 41, 7, 7, 0])
    assert torch.equal(bundle.train_batch(index), bundle.normalize(images[index]))
    monkeypatch.setattr(datasets, "NORMALIZED_COPY_BYTES", 0)  # too large to copy: per batch, same values
    small = datasets.DataBundle("t", images, torch.zeros(50, dtype=torch.long), images[:5], torch.zeros(5),
                                10, torch.full((1, 1, 1, 1), 33.3), torch.full((1, 1, 1, 1), 77.7))
    assert torch.equal(small.train_batch(index), bundle.train_batch(index))


@pytest.mark.parametrize("load, cores, expected", [(0.1, 2, 2), (1.0, 2, 1), (9.0, 2, 1), (1.2, 8, 7)])
def test_default_threads_leave_busy_cores_alone(monkeypatch, load, cores, expected):
    from bnexp.engine import ranks

    monkeypatch.setattr(ranks.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(ranks.os, "getloadavg", lambda: (load, load, load))
    clock = ranks.CpuClock()
    monkeypatch.setattr(clock, "others_busy", lambda: 0.0)
    threads, why = ranks.auto_threads(clock)
    assert threads == expected and f"{threads} of {cores} cores" in why


def test_threads_choice_is_recorded(bnexp, tiny):
    import json

    bnexp("train", "-q", *tiny)
    record = json.loads(next((bnexp.out / "runs").iterdir()).joinpath("run.json").read_text())
    assert record["repro"]["threads_choice"].startswith("auto: ")
    bnexp("train", "-q", *tiny, "threads=1")
    records = [json.loads((d / "run.json").read_text()) for d in (bnexp.out / "runs").iterdir()]
    assert sorted(r["repro"]["threads_choice"] for r in records)[1] == "threads=1"


def test_composition_is_cached_per_config_version(tmp_path, monkeypatch):
    """The second load of the same overrides does not start Hydra, resolves ${oc.env:...} afresh,
    and a changed config file composes again."""
    import shutil

    import hydra

    from bnexp.config import compose
    from bnexp.config.groups import config_dir

    tree = tmp_path / "conf"
    shutil.copytree(config_dir(), tree)
    monkeypatch.setattr(compose, "config_dir", lambda: tree)
    monkeypatch.setenv("BNEXP_CACHE_DIR", str(tmp_path / "cache"))
    first = compose.load(["model=lenet", "optimizer.lr=0.3"])
    assert len(list((tmp_path / "cache" / "compose").iterdir())) == 1

    def no_hydra(*args, **kwargs):
        raise AssertionError("Hydra composed although the composition was cached")

    monkeypatch.setattr(hydra, "compose", no_hydra)
    again = compose.load(["model=lenet", "optimizer.lr=0.3"])
    assert again == first
    monkeypatch.setenv("BNEXP_OUTPUT_DIR", str(tmp_path / "elsewhere"))
    assert compose.load(["model=lenet", "optimizer.lr=0.3"]).output_dir == str(tmp_path / "elsewhere")
    with (tree / "model" / "lenet.yaml").open("a") as f:
        f.write("# edited\n")
    with pytest.raises(BnexpError, match="Hydra composed"):  # Hydra ran (its failure, reworded)
        compose.load(["model=lenet", "optimizer.lr=0.3"])


@pytest.mark.parametrize("damage", ["truncated", "not json", "deep nesting", "wrong key", "edited value",
                                    "bad schema", "symlink", "fifo", "directory", "huge"])
def test_a_damaged_or_planted_compose_cache_entry_is_ignored(tmp_path, monkeypatch, damage):
    """Cache entries are untrusted: whatever sits at an entry's name, the next load composes with
    Hydra (never hangs, never crashes, never uses a value the entry's digest does not vouch for)."""
    import json
    import os

    import hydra

    from bnexp.config import cache, compose

    monkeypatch.setenv("BNEXP_CACHE_DIR", str(tmp_path / "cache"))
    overrides = ["optimizer.lr=0.3"]
    truth = compose.load(overrides)
    entry = cache.entry_path(compose.COMPOSE_CACHE, compose._compose_cache_key(overrides))
    envelope = json.loads(entry.read_text())
    entry.unlink()
    if damage == "truncated":
        entry.write_text(json.dumps(envelope)[:200])
    elif damage == "not json":
        entry.write_bytes(b"\x00\xff garbage")
    elif damage == "deep nesting":
        entry.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "wrong key":
        entry.write_text(json.dumps({**envelope, "key": "0" * 64}))
    elif damage == "edited value":  # content changed without the digest: corruption, not a composition
        envelope["value"]["optimizer"]["lr"] = 9.0
        entry.write_text(json.dumps(envelope))
    elif damage == "bad schema":  # a consistent envelope whose config the schema refuses
        envelope["value"]["optimizer"]["lr"] = "fast"
        envelope["digest"] = cache._digest(cache._canonical(envelope["value"]))
        entry.write_text(json.dumps(envelope))
    elif damage == "symlink":
        target = tmp_path / "elsewhere.json"
        target.write_text(json.dumps(envelope))
        entry.symlink_to(target)
    elif damage == "fifo":
        os.mkfifo(entry)
    elif damage == "directory":
        entry.mkdir()
    elif damage == "huge":
        entry.write_text(json.dumps({**envelope, "pad": "x" * (cache.MAX_ENTRY_BYTES + 1)}))
    composed = []
    real = hydra.compose
    monkeypatch.setattr(hydra, "compose", lambda *a, **k: composed.append(1) or real(*a, **k))
    assert compose.load(overrides) == truth
    assert composed == [1]


def test_compose_cache_writers_replace_atomically(tmp_path, monkeypatch):
    """Concurrent writers of one entry leave a complete entry and no temporary files; a cache that
    cannot be written (a file where its directory should be) costs nothing but the cache."""
    import threading

    from bnexp.config import cache

    monkeypatch.setenv("BNEXP_CACHE_DIR", str(tmp_path / "cache"))
    values = [{"writer": i, "pad": "x" * 50_000} for i in range(8)]
    threads = [threading.Thread(target=lambda v=v: [cache.write("s", "k", v) for _ in range(20)]) for v in values]
    reads = []
    reader = threading.Thread(target=lambda: [reads.append(cache.read("s", "k")) for _ in range(200)])
    for t in [*threads, reader]:
        t.start()
    for t in [*threads, reader]:
        t.join()
    assert all(r is None or r in values for r in reads)  # never half an entry
    assert cache.read("s", "k") in values
    assert [p.name for p in (tmp_path / "cache" / "s").iterdir()] == [cache.entry_path("s", "k").name]
    monkeypatch.setenv("BNEXP_CACHE_DIR", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a directory")
    cache.write("s", "k", {"v": 1})
    assert cache.read("s", "k") is None


def test_compose_cache_prunes_only_its_own_entries(tmp_path, monkeypatch):
    from bnexp.config import cache

    monkeypatch.setenv("BNEXP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "MAX_ENTRIES", 3)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("someone else's file")
    for i in range(4):
        cache.write("s", f"k{i}", i)
    assert (tmp_path / "s" / "notes.txt").exists()
    assert cache.read("s", "k3") == 3 and cache.read("s", "k0") is None


def test_tensorboard_writer_is_created_with_the_first_event(tmp_path):
    """No event file (and no TensorBoard import cost) until something is logged; the first event
    file still starts with the config text; a sink closed before any event leaves nothing."""
    from types import SimpleNamespace

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bnexp.config.compose import load
    from bnexp.tracking.sinks.tensorboard import TensorBoardSink

    cfg = load([])
    idle = TensorBoardSink(SimpleNamespace(path=tmp_path / "idle"), cfg, None)
    idle.close("failed")
    assert not (tmp_path / "idle").exists()
    sink = TensorBoardSink(SimpleNamespace(path=tmp_path / "run"), cfg, None)
    assert not (tmp_path / "run").exists()
    sink.scalars({"train/loss": 1.5}, 3)
    sink.close("completed")
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == [1.5]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_digits_checksum_is_verified_once_per_file_version(tmp_path, monkeypatch):
    """The digest of the digits cache is computed when a version of the file is first read, not on
    every run; rewriting the file (even with its mtime set back) makes the next read check it again."""
    import os

    import numpy as np

    import bnexp.data.datasets as datasets

    monkeypatch.setenv("BNEXP_CACHE_DIR", str(tmp_path / "cache"))
    settings = datasets.DatasetConfig(root=str(tmp_path / "data"))
    datasets._load_digits(settings)  # builds the file
    path = tmp_path / "data" / datasets.DIGITS_CACHE.format(size=28)
    digests = []
    real = datasets._digest
    monkeypatch.setattr(datasets, "_digest", lambda *a: digests.append(1) or real(*a))
    first = datasets._read_digits_cache(path, 28)
    assert first is not None and len(digests) == 1
    assert datasets._read_digits_cache(path, 28) is not None and len(digests) == 1  # same version: no digest
    before = os.stat(path)
    images, labels, num_classes = first
    stored = str(np.load(path)["digest"])
    np.savez(path, images=images + 1, labels=labels, num_classes=np.int64(num_classes), digest=np.str_(stored))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime, another version
    assert os.stat(path).st_size == before.st_size
    assert datasets._read_digits_cache(path, 28) is None and len(digests) == 2
