"""Process group setup: rank and world size from torchrun, SLURM or OpenMPI variables.

:func:`detect` is a pure function of the environment so it can be tested; :func:`initialize`
sets the ``env://`` variables torch expects and joins the process group (``gloo`` on CPU,
``nccl`` on CUDA).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist

__all__ = ["ProcessInfo", "detect", "initialize", "shutdown"]


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_host(nodelist: str) -> str:
    # "node[01-04,07],gpu2" -> "node01"; simple SLURM host-list expansion of the first host
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head


def detect(env: Mapping[str, str] | None = None) -> ProcessInfo:
    """Rank, world size and rendezvous address from the launcher's variables.

    Recognised, in order: torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), OpenMPI
    (``OMPI_COMM_WORLD_*``), SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
    first host of ``SLURM_JOB_NODELIST``). ``MASTER_ADDR``/``MASTER_PORT`` win when set.
    """
    env = os.environ if env is None else env
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if "RANK" in env and "WORLD_SIZE" in env:
        info = ProcessInfo(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            launcher="torchrun",
        )
    elif "OMPI_COMM_WORLD_RANK" in env:
        info = ProcessInfo(
            int(env["OMPI_COMM_WORLD_RANK"]),
            int(env["OMPI_COMM_WORLD_SIZE"]),
            int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)),
            launcher="openmpi",
        )
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        host = _first_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1")))
        info = ProcessInfo(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            master_addr=host,
            launcher="slurm",
        )
    else:
        info = ProcessInfo()
    return dataclasses.replace(
        info,
        master_addr=addr or info.master_addr,
        master_port=int(port) if port else info.master_port,
    )


def initialize(info: ProcessInfo, device: torch.device) -> None:
    """Join the process group described by ``info`` (nothing to do for one process)."""
    if not info.distributed or dist.is_initialized():
        return
    for key, value in (
        ("RANK", info.rank),
        ("WORLD_SIZE", info.world_size),
        ("LOCAL_RANK", info.local_rank),
        ("MASTER_ADDR", info.master_addr),
        ("MASTER_PORT", info.master_port),
    ):
        os.environ.setdefault(key, str(value))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size
    )


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
