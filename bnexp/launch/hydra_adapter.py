"""The one module that uses Hydra's private API: what a sweep needs from Hydra beyond ``compose``.

Why it exists. Hydra's public API composes a config (``hydra.compose``) and runs a multirun from
``@hydra.main`` (``-m`` on the command line, which collides with Typer). bnexp plans a sweep
itself (every job composed and validated before anything runs, Optuna trials asked in batches,
continued sweeps running only their pending jobs) and then hands the jobs to Hydra's launcher
plugins, so that joblib, submitit_local and submitit_slurm run them exactly as ``-m`` would.
That needs Hydra's app object, its config search path, its config loader (the launcher options,
``glob()``), its callbacks, and the submitit launcher's executor settings: all of them
``hydra._internal`` or private attributes. Everything else in :mod:`bnexp.launch` goes through
this module, and ``tests/test_hydra_adapter.py`` calls each function here against the installed
Hydra (an upgrade that moves or renames one of them fails there, not in a user's sweep) and fails
when any other module of bnexp touches ``hydra._internal`` or these private names.

Pinned: hydra-core 1.3.x (constraints.txt).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Callable


def search_path():
    """Hydra's config search path with bnexp's ``conf/`` as the primary config directory."""
    from hydra._internal.utils import create_config_search_path

    from bnexp.config.groups import config_dir

    return create_config_search_path(f"file://{config_dir()}")


def config_loader():
    """Hydra's config loader over bnexp's ``conf/``: lists group options (the installed launchers)
    and expands ``glob()`` when overrides are parsed."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    return ConfigLoaderImpl(config_search_path=search_path())


class MultirunApp:
    """Hydra's app object for one sweep: the composed multirun config (``cfg``, with its ``hydra``
    node), the multirun callbacks, and the launcher plugin it names."""

    def __init__(self, overrides: list[str]):
        from hydra import version
        from hydra._internal.callbacks import Callbacks
        from hydra._internal.hydra import Hydra
        from hydra.core.global_hydra import GlobalHydra
        from hydra.types import HydraContext, RunMode

        from bnexp.config.schema import register_schemas

        register_schemas()
        version.setbase("1.3")
        GlobalHydra.instance().clear()
        self.hydra = Hydra.create_main_hydra2("bnexp", search_path())
        self.cfg = self.hydra.compose_config("config", overrides, run_mode=RunMode.MULTIRUN,
                                             with_log_configuration=True)
        self.callbacks = Callbacks(self.cfg)
        self.context = HydraContext(config_loader=ReusingLoader(self.hydra.config_loader), callbacks=self.callbacks)

    @contextlib.contextmanager
    def multirun(self):
        """Hydra's ``on_multirun_start`` / ``on_multirun_end`` around the launches of one sweep."""
        self.callbacks.on_multirun_start(config=self.cfg, config_name="config")
        yield
        self.callbacks.on_multirun_end(config=self.cfg, config_name="config")

    def launcher(self, task_function: Callable[[Any], Any]):
        """The configured launcher plugin, running ``task_function`` for each job."""
        from hydra.core.plugins import Plugins

        return Plugins.instance().instantiate_launcher(hydra_context=self.context, task_function=task_function,
                                                       config=self.cfg)


class ReusingLoader:
    """Hydra's config loader, composing each job's config (``load_sweep_config``, called by every
    launcher for every job) once per *shape* instead of once per job. Jobs whose overrides choose
    the same config groups and set the same keys differ only in those keys' values, so the config
    of the first such job is copied and the next job's values are applied to it with Hydra's own
    override code (``_apply_overrides_to_config``), its ``hydra.overrides`` lists and
    ``override_dirname`` set as Hydra sets them: ~0.2 s of composing becomes a few milliseconds.
    Anything else (``+key``, ``~key``, a key the config does not have) is composed by Hydra.
    ``tests/test_hydra_adapter.py`` checks that the result equals Hydra's own, node for node.
    The shapes are kept per process (:data:`SHAPES`, keyed by the sweep), so a joblib worker,
    which gets a fresh copy of the loader with every job, reuses them too."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name: str):
        if name == "loader":  # not set yet: unpickling asks before __init__ ran
            raise AttributeError(name)
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config, sweep_overrides: list[str]):
        import copy

        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        hydra_overrides = list(OmegaConf.to_container(master_config.hydra.overrides.hydra))
        parsed = OverridesParser.create().parse_overrides(hydra_overrides + list(sweep_overrides))
        groups = master_config.hydra.runtime.choices
        plain = [o for o in parsed if not (o.is_add() or o.is_delete() or o.package is not None
                                          or o.key_or_group in groups)]
        shape = (str(master_config.hydra.sweep.dir), tuple(master_config.hydra.overrides.task),
                 tuple(o.input_line for o in parsed if o not in plain), tuple(o.key_or_group for o in plain))
        known = SHAPES.get(shape)
        if known is None or not all(_has(known, o.key_or_group) for o in plain):
            config = self.loader.load_sweep_config(master_config, list(sweep_overrides))
            if len(SHAPES) >= MAX_SHAPES:
                SHAPES.clear()
            SHAPES[shape] = copy.deepcopy(config)
            return config
        config = copy.deepcopy(known)
        ConfigLoaderImpl._apply_overrides_to_config(plain, config)
        naming = config.hydra.job.config.override_dirname
        config.hydra.overrides.hydra = [o.input_line for o in parsed if o.is_hydra_override()]
        config.hydra.overrides.task = [o.input_line for o in parsed if not o.is_hydra_override()]
        config.hydra.job.override_dirname = get_overrides_dirname(
            overrides=[o for o in parsed if not o.is_hydra_override()], kv_sep=naming.kv_sep, item_sep=naming.item_sep,
            exclude_keys=naming.exclude_keys)
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config


SHAPES: dict[tuple, Any] = {}  # (sweep dir, its overrides, group choices, keys set) -> a job's composed config
MAX_SHAPES = 64
_ABSENT = object()


def _has(config, key: str) -> bool:
    from omegaconf import OmegaConf

    return OmegaConf.select(config, key, default=_ABSENT, throw_on_resolution_failure=False) is not _ABSENT


def submitit_settings(launcher) -> tuple[str, dict[str, Any], Path] | None:
    """Of a hydra-submitit-launcher plugin: its executor kind (``slurm`` or ``local``), its
    settings as given in ``hydra.launcher``, and the sweep directory; None for other launchers."""
    executor = getattr(launcher, "_EXECUTOR", None)
    if executor is None:
        return None
    return executor, dict(launcher.params), Path(str(launcher.config.hydra.sweep.dir))


def job_error(job_return) -> BaseException:
    """The exception a failed job raised. Hydra's public ``return_value`` re-raises it after
    writing "Error executing job ..." to stderr; this catches it with that line captured."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            job_return.return_value
        except BaseException as exc:  # noqa: BLE001 - the job's own exception, handed back
            return exc
    raise ValueError("job_error: the job did not fail")
