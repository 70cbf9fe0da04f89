"""Loggers (bnexp.tracking.sinks): measurements are taken once and written by every sink the
``logger`` config group names. logger=mlflow against a real MLflow store (SQLite in a temp dir):
params, per-step metrics, final metrics, one MLflow run continued by a resumed bnexp run."""

from __future__ import annotations

import json

import pytest

from bnexp.config.compose import load
from bnexp.core.errors import BnexpError


def test_logger_group_composes_and_checks_its_sinks(monkeypatch):
    assert list(load([]).logger.sinks) == ["tensorboard"]
    assert list(load(["logger=mlflow"]).logger.sinks) == ["tensorboard", "mlflow"]
    with pytest.raises(BnexpError, match="logger.sinks=wandb: valid values are mlflow, tensorboard"):
        load(["logger.sinks=[wandb]"])
    from bnexp.config import compose, groups

    assert groups.sink_names() == ["mlflow", "tensorboard"]  # the modules of bnexp/tracking/sinks
    assert groups.sink_requires("mlflow") == ("mlflow", "bnexp[mlflow]") and groups.sink_requires("tensorboard") is None
    monkeypatch.setattr(compose, "sink_requires", lambda name: ("no_such_package_bnexp", "bnexp[mlflow]"))
    with pytest.raises(BnexpError, match=r"the no_such_package_bnexp package is not installed; pip install 'bnexp\[mlflow\]'"):
        load(["logger=mlflow"])


def test_hooks_are_removed_when_a_run_ends(tmp_path, tiny):
    from bnexp.engine.callbacks import Callback
    from bnexp.launch.trainer import train

    class Keep(Callback):
        def on_start(self, loop):
            self.module = loop.module

    keep = Keep()
    cfg = load([*tiny, "hist_every_steps=2", f"output_dir={tmp_path}"])
    train(cfg, [], progress=False, callbacks=[keep])
    assert not any(m._forward_hooks for m in keep.module.modules())


def test_mlflow_logs_params_steps_and_final_metrics_and_continues_a_resumed_run(cli, tiny, tmp_path):
    pytest.importorskip("mlflow", reason="logger=mlflow needs the optional extra bnexp[mlflow]")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["logger=mlflow", f"logger.mlflow_uri={uri}", "logger.mlflow_experiment=study", *tiny, "-q"]
    cli("train", *common, "name=first")
    (run_dir,) = cli.out.glob("runs/*-first-*")
    cli("train", f"resume={run_dir.name}", "epochs=2", "-q")
    record = json.loads((run_dir / "run.json").read_text())

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("study")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == record["id"] and run.info.status == "FINISHED"
    assert run.data.tags["bnexp.run_id"] == record["id"]
    params = run.data.params
    assert params["norm.kind"] == "custom" and params["optimizer.lr"] == "0.1" and "output_dir" not in params
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    steps = [m.step for m in losses]
    assert steps == sorted(set(steps)) and steps[-1] == record["metrics"]["step"] and len(steps) > 2
    assert run.data.metrics["final/val_acc"] == pytest.approx(record["metrics"]["val_acc"])
    assert run.data.metrics["final/best_val_acc"] == pytest.approx(record["metrics"]["best_val_acc"])
    epochs = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.step for m in epochs] == [e["step"] for e in map(json.loads, (run_dir / "metrics.jsonl").read_text()
                                                                .splitlines()) if e["kind"] == "epoch"]
    assert list((run_dir).glob("events.out.tfevents.*"))  # TensorBoard is written too


def test_a_logger_is_one_module_of_the_sinks_package(tmp_path, tiny, monkeypatch):
    """The recipe's claim: a module in bnexp/tracking/sinks (found by its file name) and a config
    naming it are all a new logger takes; probes hand it the same measurements as every sink."""
    import bnexp.tracking.sinks as sinks_package
    from bnexp.config import groups
    from bnexp.launch.trainer import train

    extra = tmp_path / "sinks"
    extra.mkdir()
    (extra / "tensorboard.py").write_text("")  # the names validation sees
    (extra / "tsvtest.py").write_text(
        "from bnexp.tracking.sinks import Sink\n\n\n"
        "class TSVSink(Sink):\n"
        "    def __init__(self, run, cfg, resumed_at):\n"
        "        self.file = open(run.path / 'scalars.tsv', 'a')\n\n"
        "    def scalars(self, values, step):\n"
        "        self.file.writelines(f'{step}\\t{tag}\\t{value}\\n' for tag, value in values.items())\n\n"
        "    def close(self, status):\n"
        "        self.file.write(f'closed\\t{status}\\n')\n"
        "        self.file.close()\n")
    monkeypatch.setattr(groups, "SINKS_DIR", extra)
    monkeypatch.setattr(sinks_package, "__path__", [*sinks_package.__path__, str(extra)])
    monkeypatch.delitem(__import__("sys").modules, "bnexp.tracking.sinks.tsvtest", raising=False)
    cfg = load([*tiny, "logger.sinks=[tensorboard,tsvtest]", f"output_dir={tmp_path / 'out'}"])
    record = train(cfg, [], progress=False)
    lines = (__import__("pathlib").Path(record.dir) / "scalars.tsv").read_text().splitlines()
    assert any("\ttrain/loss\t" in line for line in lines) and any("\tval/acc\t" in line for line in lines)
    assert lines[-1] == "closed\tcompleted"


def test_no_probe_holds_a_run_or_a_sink():
    """Measuring is apart from writing: every listener that measures takes the Measurements hand-off,
    never the run, a sink or a writer; only the run's own listeners and Publishing hold those."""
    import inspect

    from bnexp.engine.callbacks import Callback
    from bnexp.tracking import diagnostics, listeners, probes, sinks, telemetry

    probes_found = [cls for module in (telemetry, diagnostics, probes) for cls in vars(module).values()
                    if inspect.isclass(cls) and issubclass(cls, Callback) and cls.__module__ == module.__name__]
    assert {c.__name__ for c in probes_found} >= {"Telemetry", "TrainEvalGap", "GradientTelemetry", "ScienceProbes"}
    for cls in probes_found:
        params = set(inspect.signature(cls.__init__).parameters)
        assert not params & {"run", "sinks", "sink", "writer"}, cls
    assert sinks.Publishing and listeners.RunLog  # the writers: sinks (via Publishing) and the run's log
