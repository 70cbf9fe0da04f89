"""TensorBoard's HParams experiment (the table's columns) for a sweep or a selection of runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Optional

# Always worth a column; after the keys that vary.
CORE_HPARAMS = ("model.name", "norm.kind", "optimizer.name", "optimizer.lr", "batch_size", "dataset.name",
                "epochs", "seed", "status")


FINAL_METRICS = ("val_acc", "best_val_acc", "val_loss", "train_loss", "train_acc")  # a run's HParams metrics
FINAL_TAGS = tuple(f"final/{m}" for m in FINAL_METRICS)  # their TensorBoard tags


GROUP_KEYS = ("name", "kind", "type")  # what identifies a group's choice: model.name, norm.kind, device.type


EXPERIMENT_RUN = "sweep"  # the folder holding the HParams experiment: its name in TensorBoard's run list


def _hparam_type(value: Any) -> int:
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def experiment_summary(params: dict[str, Any], leading: Iterable[str], metric_tags: Iterable[str] = FINAL_TAGS):
    """The HParams experiment (the table's columns): ``leading`` keys marked ``differs``, then the
    core keys, each typed from its value in ``params``; ``metric_tags`` as the metrics."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    leading = [k for k in dict.fromkeys(leading) if k in params]
    names = leading + [k for k in CORE_HPARAMS if k in params and k not in leading]
    experiment = api_pb2.Experiment(
        time_created_secs=time.time(),
        hparam_infos=[api_pb2.HParamInfo(name=k, type=_hparam_type(params[k]), differs=k in leading) for k in names],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags],
    )
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.EXPERIMENT_TAG, tensor=metadata.NULL_TENSOR,
                      metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment)))
    return summary


def write_experiment(directory: Path, params: dict[str, Any], leading: Iterable[str]) -> None:
    """Write the experiment into ``directory/sweep``: TensorBoard lists it as a run named ``sweep``
    (in the directory itself it would be a stray run named ``.``)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    (Path(directory) / EXPERIMENT_RUN).mkdir(exist_ok=True)
    writer = EventFileWriter(str(Path(directory) / EXPERIMENT_RUN))
    writer.add_event(event_pb2.Event(wall_time=time.time(), summary=experiment_summary(params, leading)))
    writer.close()


def param_key(key: str, params: dict[str, Any]) -> Optional[str]:
    """The hparam an override key stands for: itself, or a group's identifying key (norm -> norm.kind)."""
    if key in params:
        return key
    return next((f"{key}.{k}" for k in GROUP_KEYS if f"{key}.{k}" in params), None)


def write_sweep_experiment(sweep_dir: Path, params: dict[str, Any], swept: Iterable[str]) -> None:
    """A sweep's table: its swept keys (``norm`` stands for ``norm.kind``) lead."""
    leading = [k for k in (param_key(key, params) for key in swept) if k is not None]
    write_experiment(sweep_dir, {**params, "status": "completed"}, leading)
