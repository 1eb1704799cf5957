"""``genloom train … --nproc N``: the same run as ``torchrun --standalone --nproc-per-node N -m genloom train …``,
launched through torch.distributed's own launcher (elastic agent, c10d rendezvous on a free local port).

When a rank dies the agent stops the others (SIGTERM, then SIGKILL) and this prints one line naming the lost rank
and the command that resumes the run from its last checkpoint.
"""
from __future__ import annotations

import os
import sys
import uuid

from genloom.errors import GenloomError


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def launch(nproc: int, train_argv: list[str], *, resume_cmd: str) -> int:
    """Run ``python -m genloom <train_argv>`` in ``nproc`` processes; return 0, or raise GenloomError with one
    line naming the rank that failed first."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise GenloomError(f"--nproc {nproc}: need at least 1 process")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)  # our own one-line error instead
    # one intra-op thread per core share unless the user says otherwise (torchrun sets 1 for nproc > 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ["GENLOOM_RESUME_CMD"] = resume_cmd
    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                       rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                       start_method="spawn")
    try:
        elastic_launch(cfg, entrypoint=sys.executable)("-m", "genloom", *train_argv)
    except SignalException:  # Ctrl-C / SIGTERM: the agent passed it on; the ranks checkpoint and rank 0 prints
        return 130  # the resume command
    except ChildFailedError as e:
        rank, f = e.get_first_failure()
        if f.exitcode == 130 or f.exitcode == 2:  # interrupted, or bad input: the rank printed why
            return f.exitcode
        how = f"was killed by {f.signal_name()}" if f.exitcode < 0 else f"exited with code {f.exitcode}"
        raise GenloomError(f"rank {rank} (pid {f.pid}) {how}; the other ranks were stopped. Resume with: "
                           f"{resume_cmd}") from None
    return 0
