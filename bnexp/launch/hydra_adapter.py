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
        self.context = HydraContext(config_loader=self.hydra.config_loader, callbacks=self.callbacks)

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
