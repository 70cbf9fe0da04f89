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
