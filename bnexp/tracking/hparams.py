"""TensorBoard's HParams experiment (the table's columns) for a sweep or a selection of runs, and the
custom-scalars layout written beside it.

Integer hyperparameters (``batch_size``, ``epochs``, ``seed``) are written as strings: TensorBoard
prints every number with five significant digits (``64.000``), and a batch size is a choice among
a few values anyway, so a string column with those values (in numeric order) is also the filter
one wants. Floats stay numbers (an interval filter, a numeric axis in parallel coordinates).
"""

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


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def session_value(value: Any) -> Any:
    """How a run writes one hparam into its HParams entry: integers as their digits (see above)."""
    return str(value) if is_integer(value) else value


def _hparam_type(value: Any) -> int:
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, float):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def experiment_summary(params: dict[str, Any], leading: Iterable[str], metric_tags: Iterable[str] = FINAL_TAGS,
                       integer_values: Optional[dict[str, Iterable[int]]] = None):
    """The HParams experiment (the table's columns): ``leading`` keys marked ``differs``, then the
    core keys, each typed from its value in ``params``; ``metric_tags`` as the metrics.
    ``integer_values``: the values an integer key takes across the runs, its filter's choices."""
    from google.protobuf import struct_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    leading = [k for k in dict.fromkeys(leading) if k in params]
    names = leading + [k for k in CORE_HPARAMS if k in params and k not in leading]
    infos = []
    for k in names:
        info = api_pb2.HParamInfo(name=k, type=_hparam_type(params[k]), differs=k in leading)
        if integer_values and k in integer_values:
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[
                struct_pb2.Value(string_value=str(v)) for v in sorted(set(integer_values[k]))]))
        infos.append(info)
    experiment = api_pb2.Experiment(
        time_created_secs=time.time(), hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags],
    )
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.EXPERIMENT_TAG, tensor=metadata.NULL_TENSOR,
                      metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment)))
    return summary


# The CUSTOM SCALARS tab: training and validation on one chart (TIME SERIES cannot overlay two tags).
LAYOUT = {"loss and accuracy": {"loss": [r"^train/loss$", r"^epoch/train_loss$", r"^val/loss$"],
                                "accuracy": [r"^train/acc$", r"^epoch/train_acc$", r"^val/acc$"],
                                "val accuracy: running vs batch statistics vs recalibrated": [r"^val/acc(_.*)?$"]}}


def layout_summary():
    """The custom-scalars layout (:data:`LAYOUT`) as a summary, written without TensorFlow."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, types_pb2
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, chart=[
            layout_pb2.Chart(title=chart, multiline=layout_pb2.MultilineChartContent(tag=tags))
            for chart, tags in charts.items()])
        for title, charts in LAYOUT.items()])
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.CONFIG_SUMMARY_TAG, metadata=metadata.create_summary_metadata(),
                      tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                                    string_val=[layout.SerializeToString()]))
    return summary


def write_experiment(directory: Path, params: dict[str, Any], leading: Iterable[str],
                     integer_values: Optional[dict[str, Iterable[int]]] = None) -> None:
    """Write the experiment and the custom-scalars layout into ``directory/sweep``: TensorBoard lists
    it as a run named ``sweep`` (in the directory itself it would be a stray run named ``.``)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    (Path(directory) / EXPERIMENT_RUN).mkdir(exist_ok=True)
    writer = EventFileWriter(str(Path(directory) / EXPERIMENT_RUN))
    for summary in (experiment_summary(params, leading, integer_values=integer_values), layout_summary()):
        writer.add_event(event_pb2.Event(wall_time=time.time(), summary=summary))
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
