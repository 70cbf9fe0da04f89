"""The typed schema of a run config: one dataclass per group, registered in Hydra's ConfigStore so
every group's YAML extends it. The one home of every default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

OUTPUT_DIR_ENV, DEFAULT_OUTPUT_DIR = "BNEXP_OUTPUT_DIR", "outputs"  # where runs go unless output_dir says
MAX_NAME = 64  # longest name= label: a run id must stay well inside a file name's 255 bytes
@dataclass
class ModelConfig:
    name: str = MISSING
    hidden_sizes: List[int] = field(default_factory=list)
    channels: List[int] = field(default_factory=list)
    activation: str = "relu"
    init: str = "default"
    init_std: float = 0.01  # used by init=normal
    # null: the layers listed above; N: N norm sites (mlp: N hidden layers of hidden_sizes[0] units;
    # lenet/convnet: the conv stages plus 3x3 convs of the last stage's width up to N convs;
    # resnet: the ResNet depth 6n+2, i.e. n blocks per stage and 6n+1 norm sites)
    depth: Optional[int] = None


@dataclass
class NormConfig:
    kind: str = MISSING
    eps: float = 1e-5
    momentum: Optional[float] = 0.1
    compile: bool = False
    ghost_batch_size: Optional[int] = None  # statistics over virtual batches of this size (Hoffer et al. 2017)
    sync: bool = False  # with nproc > 1: statistics over the global batch (all ranks)
    groups: int = 2  # norm=group: channel groups per site (must divide every layer width)
    noise: float = 0.0  # > 0: random per-channel scale exp(noise*u) and shift noise*v after the norm, new each step
    rmax: float = 3.0  # batch_renorm: r = sigma_B/sigma clipped to [1/rmax, rmax]
    dmax: float = 5.0  # batch_renorm: d = (mu_B - mu)/sigma clipped to [-dmax, dmax]
    warmup_steps: int = 0  # batch_renorm: plain BN (r=1, d=0) for this many steps
    relax_steps: int = 0  # batch_renorm: then rmax/dmax grow linearly from 1/0 over this many steps


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "constant"


@dataclass
class DeviceConfig:
    type: str = "auto"


DEFAULT_DATA_ROOT = "${oc.env:BNEXP_DATA_DIR,'~/.cache/bnexp/data'}"


@dataclass
class DatasetConfig:
    """The ``dataset`` node: the union of all datasets' keys; each uses its own."""

    name: str = "digits"
    limit_train: Optional[int] = None  # keep the first K training images (null: all)
    limit_val: Optional[int] = None  # keep the first K validation images (null: all)
    val_fraction: float = 0.2  # digits, idx: share of the images held out for validation
    split_seed: int = 0  # digits, idx: seed of the train/validation shuffle
    image_size: int = 28  # digits: 8x8 images are resized to this so every model accepts them
    root: str = DEFAULT_DATA_ROOT  # mnist, fashion_mnist, cifar10: where torchvision keeps the files
    download: bool = True  # mnist, fashion_mnist, cifar10: fetch missing files
    path: Optional[str] = None  # idx: directory with one *images*idx3-ubyte[.gz] and one *labels*idx1-ubyte[.gz]
    images: Optional[str] = None  # idx: explicit images file (instead of path)
    labels: Optional[str] = None  # idx: explicit labels file (instead of path)


@dataclass
class LoggerConfig:
    """The ``logger`` node: where measurements are written besides metrics.jsonl."""

    name: str = "tensorboard"
    sinks: List[str] = field(default_factory=lambda: ["tensorboard"])  # modules of bnexp/tracking/sinks
    mlflow_uri: Optional[str] = None  # mlflow: tracking URI (null: sqlite:///<output_dir>/mlflow.db)
    mlflow_experiment: str = "bnexp"  # mlflow: experiment the runs are filed under


@dataclass
class DiagnosticsConfig:
    """Probes of docs/bn-science.md; each costs nothing when 0/false."""

    shift_every: int = 0  # per-site input/output distribution shift on a fixed probe batch, every N steps
    ics_every: int = 0  # Santurkar et al.'s internal covariate shift, every N steps (K-1 extra passes)
    smooth_every: int = 0  # loss landscape along the gradient, every N steps (len(smooth_steps)+1 passes)
    smooth_steps: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])  # multiples of the lr
    signal_prop: bool = False  # per-depth channel mean^2 and variance at initialization
    probe_batch: Optional[int] = None  # examples in the fixed probe batch (null: batch_size)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    epochs: int = 5
    max_steps: Optional[int] = None
    batch_size: int = 64
    eval_batch_size: int = 256
    seed: int = 0
    threads: Optional[int] = None
    nproc: int = 1  # processes per node
    nnodes: int = 1  # nodes of one run (each runs `bnexp train` with the same settings)
    node_rank: Optional[int] = None  # this node's place; default: Slurm's SLURM_NODEID (or SLURM_PROCID)
    rdzv_endpoint: Optional[str] = None  # HOST:PORT of node 0, where the nodes meet (nnodes > 1)
    rdzv_timeout: int = 300  # seconds to wait for every node (and for a peer at each collective)
    recalibrate_batches: int = 20
    log_every_steps: int = 10
    hist_every_steps: int = 100
    log_channels: int = 0  # N > 0: per-channel gamma/beta scalars of the first N channels (2N cards per site)
    checkpoint: bool = True
    output_dir: str = f"${{oc.env:{OUTPUT_DIR_ENV},{DEFAULT_OUTPUT_DIR}}}"
    name: Optional[str] = None
    resume: Optional[str] = None
    description: str = ""


GROUP_SCHEMAS = {"model": ModelConfig, "norm": NormConfig, "optimizer": OptimizerConfig, "device": DeviceConfig,
                 "dataset": DatasetConfig, "logger": LoggerConfig}


# What may change when a run is continued (resume=RUN epochs=N): how long it trains.
EXTENDABLE_KEYS = ("epochs", "max_steps")


def register_schemas() -> None:
    """Put the group schemas in Hydra's ConfigStore as ``schema/<group>``: each group's YAML
    extends its schema, so any schema key can be overridden (``norm.momentum=0.01`` even with
    ``norm=none``) and Hydra type-checks the value while composing."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, node in GROUP_SCHEMAS.items():
        store.store(group="schema", name=group, node=node)
