"""``logger=mlflow``: a sink writing to an MLflow tracking store (the optional extra ``bnexp[mlflow]``).

One MLflow run per bnexp run, tagged ``bnexp.run_id``; a continued bnexp run continues its MLflow
run. Params: the flattened config (as in TensorBoard's HParams). Metrics: every scalar at its
step, buffered and sent in batches (one round trip per epoch, not per step), and the ``final/*``
metrics at the end. The MLflow run ends FINISHED (completed), FAILED or KILLED (interrupted).
Histograms have no MLflow counterpart and are left to TensorBoard.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from bnexp.tracking.sinks import Sink, final_metrics, hparams

REQUIRES = ("mlflow", "bnexp[mlflow]")  # checked when a config names this sink (bnexp.config.groups.sink_requires)
BATCH = 1000  # MLflow's limit of metrics per log_batch call
RUN_TAG = "bnexp.run_id"
END_STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "interrupted": "KILLED"}


def tracking_uri(cfg: DictConfig) -> str:
    """``logger.mlflow_uri``, or an SQLite store beside the runs: ``<output_dir>/mlflow.db``."""
    if cfg.logger.mlflow_uri:
        return cfg.logger.mlflow_uri
    return f"sqlite:///{Path(cfg.output_dir).resolve() / 'mlflow.db'}"


class MLflowSink(Sink):
    def __init__(self, run, cfg: DictConfig, resumed_at: Optional[int]):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri(cfg))
        experiment = self.client.get_experiment_by_name(cfg.logger.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(cfg.logger.mlflow_experiment))
        run_id = run.record.id
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'",
                                        max_results=1) if resumed_at is not None else []
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_id,
                                                 tags={RUN_TAG: run_id, "bnexp.run_dir": str(run.path)}).info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in hparams(cfg).items()]
            for i in range(0, len(params), 100):  # MLflow's limit of params per call
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.pending: list = []

    def scalars(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(tag, float(value), now, step) for tag, value in values.items()]
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def final(self, metrics, status):
        self.scalars(final_metrics(metrics), int(metrics.get("step", 0)))

    def close(self, status):
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, END_STATUS.get(status, "FAILED"))
