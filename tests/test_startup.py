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
