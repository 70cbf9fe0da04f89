"""A worker of a multi-process run (``python -m bnexp.launch.worker SPEC``, started by
:func:`bnexp.launch.multiproc.launch`): one rank trains with the launcher's config."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Optional

import torch.distributed as dist


def worker_main(spec_path: str) -> None:
    """One rank of a launch: train with the launcher's config; a failure becomes an exit code and
    one line in the agent's error file (the launcher reports it; the worker prints nothing)."""
    from bnexp.launch.trainer import train

    spec = pickle.loads(Path(spec_path).read_bytes())
    sys.argv = spec["argv"]  # the run record's repro.command is the user's command
    rank0 = os.environ.get("RANK") == "0"
    try:
        train(spec["cfg"], spec["overrides"], run_dir=spec["run_dir"], resume=spec["resume"],
              progress=spec["progress"], callbacks=pickle.loads(spec["callbacks"]) if rank0 else ())
    except BaseException as exc:
        if os.environ.get("BNEXP_DEBUG", "") not in ("", "0"):
            import traceback

            traceback.print_exc()
        kind, message, code = classify(exc)
        error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if error_file:
            Path(error_file).parent.mkdir(parents=True, exist_ok=True)
            Path(error_file).write_text(json.dumps({"message": message, "timestamp": int(time.time()),
                                                    "bnexp_kind": kind}))
        sys.exit(code)


def classify(exc: BaseException) -> tuple[str, str, int]:
    """(kind, one-line message, exit code) of a worker's failure."""
    from bnexp.core.errors import Diverged, Interrupted, describe_error

    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        return "interrupted", str(exc) or "stopped", 130
    if isinstance(exc, Diverged):
        return "diverged", str(exc), exc.exit_code
    if lost_peer(exc):
        return "lost", describe_error(exc), 1
    return "failed", describe_error(exc), getattr(exc, "exit_code", 1)


def lost_peer(exc: Optional[BaseException]) -> bool:
    """Whether a collective failed because another rank went away (torch's DistError, or gloo's
    RuntimeError naming its transport: "Connection reset by peer", "Connection closed by peer")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and "/gloo/" in str(exc)):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    worker_main(sys.argv[1])
