"""The processes of one attempt of a job: the command the supervisor starts, and how they die together.

One process (`resources` 1 x 1): `python -m workers.trainer_process JOB ATTEMPT`. More: torchrun starts
`gpus_per_node` of them on this node (`--standalone` on one node; on several, a c10d rendezvous at the first
node's endpoint, `store.gangs`). torchrun is started with `--max-restarts 0`: a rank that dies ends the whole
group, and the job's recovery rules (lost -> resume from the last checkpoint) take over, as for one process.

Signals: the supervisor signals torchrun's process group; torchrun passes SIGTERM on to its ranks (each in a
session of its own) and waits `--shutdown-timeout` for them to checkpoint and exit. SIGKILL reaches torchrun
only; each rank dies with its parent (`die_with_parent`), as torchrun dies with the supervisor.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """What this node runs of an attempt."""

    attempt: int
    nodes: int = 1
    per_node: int = 1  # trainer processes on this node
    node_rank: int = 0  # the seat's order (torchrun's c10d rendezvous assigns the ranks themselves)
    endpoint: str = ""  # host:port of the rendezvous (several nodes)
    address: str = ""  # this node's address, as the other nodes reach it

    @property
    def world_size(self) -> int:
        return self.nodes * self.per_node


def trainer_command(job_id: str, launch: Launch, *, shutdown_timeout_s: float, join_timeout_s: float) -> list[str]:
    entry = ["-m", "workers.trainer_process", job_id, str(launch.attempt)]
    if launch.world_size == 1:
        return [sys.executable, *entry]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={launch.per_node}",
        "--max-restarts=0",
        f"--shutdown-timeout={max(1, int(shutdown_timeout_s))}",
    ]
    if launch.nodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={launch.nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.endpoint}",
            f"--rdzv-id={job_id}-{launch.attempt}",
            # the first seat hosts the rendezvous store, whatever the host names say (loopback tests: all match)
            f"--rdzv-conf=is_host={int(launch.node_rank == 0)},join_timeout={max(1, int(join_timeout_s))}",
            f"--local-addr={launch.address}",
        ]
    return cmd + entry


def trainer_env(launch: Launch) -> dict[str, str]:
    """The environment of the trainer processes: CPU threads shared out between this node's ranks."""
    env = dict(os.environ)
    if launch.per_node > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launch.per_node))
    return env


def free_port(address: str) -> int:
    """A TCP port free on `address` now (the rendezvous binds it when the gang starts; taken meanwhile, the
    rendezvous fails and the attempt is lost and retried)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (the supervisor for torchrun or the single trainer,
    torchrun for its ranks), so no orphan keeps writing to a job that the reaper hands to a new attempt."""
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
