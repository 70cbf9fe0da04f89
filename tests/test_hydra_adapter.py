"""bnexp.launch.hydra_adapter against the installed Hydra: each of its entry points into Hydra's
private API still works (a Hydra upgrade that moves or changes one fails here), what replaced the
private helpers elsewhere still matches Hydra's own, and no other module uses that private API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bnexp.launch import hydra_adapter
from bnexp.launch.plan import HYDRA_DEFAULTS, grid

PACKAGE = Path(__file__).resolve().parent.parent / "bnexp"
PRIVATE_NAMES = {"_get_value_element_as_str", "_return_value", "_EXECUTOR", "split_arguments",
                 "create_main_hydra2", "create_config_search_path"}
BASE = [f"{k}={v}" for k, v in HYDRA_DEFAULTS.items()]


def test_only_the_adapter_uses_hydras_private_api():
    users = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "hydra_adapter.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
                names = [node.attr]
            elif isinstance(node, ast.Constant) and node.value in PRIVATE_NAMES:  # getattr(x, "_EXECUTOR")
                names = [node.value]
            bad = [n for n in names if n.startswith("hydra._internal") or n in PRIVATE_NAMES]
            if bad:
                users.setdefault(str(path.relative_to(PACKAGE.parent)), []).extend(bad)
    assert not users, users


def test_the_checker_above_sees_private_uses(tmp_path):
    """The scan is not vacuous: the adapter itself is full of what it looks for."""
    tree = ast.parse((PACKAGE / "launch" / "hydra_adapter.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {"hydra._internal.utils", "hydra._internal.config_loader_impl", "hydra._internal.hydra",
            "hydra._internal.callbacks"} <= modules


def test_config_loader_finds_bnexp_conf_and_the_launchers():
    loader = hydra_adapter.config_loader()
    assert {"basic", "joblib", "submitit_local", "submitit_slurm"} <= set(loader.get_group_options("hydra/launcher"))
    assert {"custom", "builtin", "none"} <= set(loader.get_group_options("norm"))


def test_multirun_app_composes_and_launches_a_job_and_reports_its_failure(tmp_path, capsys):
    from hydra.core.override_parser.types import Quote, QuotedString
    from hydra.core.utils import JobStatus

    sweep_dir = tmp_path / "a dir, with 'quotes' = and (parens)"
    app = hydra_adapter.MultirunApp(BASE + [
        f"hydra.sweep.dir={QuotedString(text=str(sweep_dir), quote=Quote.single).with_quotes()}",
        "hydra.sweep.subdir=${hydra.job.num}", "norm=none"])
    assert app.cfg.hydra.sweep.dir == str(sweep_dir) and app.cfg.norm.kind == "none"
    assert hydra_adapter.submitit_settings(app.launcher(lambda cfg: None)) is None

    def task(cfg):
        if cfg.seed == 2:
            raise ValueError("seed 2 breaks")
        return cfg.seed * 10

    with app.multirun():
        returns = app.launcher(task).launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.FAILED]
    assert returns[0].return_value == 10
    error = hydra_adapter.job_error(returns[1])
    assert isinstance(error, ValueError) and str(error) == "seed 2 breaks"
    assert "Error executing job" not in capsys.readouterr().err  # job_error keeps Hydra's line quiet
    with pytest.raises(ValueError):
        hydra_adapter.job_error(returns[0])


def test_submitit_settings_of_the_submitit_launcher(tmp_path):
    app = hydra_adapter.MultirunApp(BASE + ["hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}",
                                            "hydra.launcher.cpus_per_task=3"])
    kind, params, sweep_dir = hydra_adapter.submitit_settings(app.launcher(lambda cfg: None))
    assert kind == "local" and params["cpus_per_task"] == 3 and "submitit_folder" in params
    assert sweep_dir == tmp_path


@pytest.mark.parametrize("overrides", [
    ["norm=none,custom", "batch_size=range(16,49,16)", "seed=1"],
    ["seed=1", "optimizer.lr=choice(0.1,0.01)", "seed=2", "+extra=x"],  # a key twice keeps its first place
    ["model=lenet", "data_root='/a b/c'"],
])
def test_grid_matches_hydras_basic_sweeper(overrides):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create(config_loader=hydra_adapter.config_loader()).parse_overrides(overrides)
    assert grid(parsed) == BasicSweeper.split_arguments(parsed, None)[0]


@pytest.mark.parametrize("value", [3, 0.1, 1e-05, 2.5e-07, 123456789.0, True])
def test_numbers_written_with_str_are_what_hydra_writes_and_reads_back(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Override

    assert f"{value}" == Override._get_value_element_as_str(value)
    (parsed,) = OverridesParser.create().parse_overrides([f"x={value}"])
    assert parsed.value() == value and type(parsed.value()) is type(value)


def test_each_jobs_config_is_hydras_own_though_composed_once_per_shape(tmp_path):
    """The launchers' ``load_sweep_config`` goes through :class:`hydra_adapter.ReusingLoader`: jobs
    that differ only in values reuse one composition, and each result equals, node for node (the
    ``hydra`` node included), what Hydra's own loader composes for that job."""
    from omegaconf import OmegaConf

    app = hydra_adapter.MultirunApp(BASE + [f"hydra.sweep.dir={tmp_path}", "epochs=1"])
    loader = app.context.config_loader
    assert isinstance(loader, hydra_adapter.ReusingLoader)
    jobs = [[f"norm={norm}", f"optimizer.lr={lr}", f"seed={seed}"]
            for norm in ("none", "custom") for lr in (0.1, 0.5) for seed in (0, 1)]
    jobs += [["norm=custom", "optimizer.lr=0.2", "seed=3", "+hydra.job.env_set.NOTE=a"],  # composed by Hydra
             ["norm=custom", "optimizer.lr=0.2", "seed=3", "+hydra.job.env_set.NOTE=b"]]
    for number, job in enumerate(jobs):
        overrides = [*job, f"hydra.sweep.subdir={number}-${{norm.kind}}"]
        reused = loader.load_sweep_config(app.cfg, overrides)
        composed = loader.loader.load_sweep_config(app.cfg, overrides)
        assert OmegaConf.to_container(reused) == OmegaConf.to_container(composed), job
        assert reused.hydra.overrides.task == job[:3] and reused.seed == int(job[2].split("=")[1])
    shapes = [key for key in hydra_adapter.SHAPES if key[0] == str(tmp_path)]
    assert len(shapes) == 4  # two norms, and each of the two jobs Hydra composed itself
