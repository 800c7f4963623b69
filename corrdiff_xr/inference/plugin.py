"""Ship an in-memory model's temporary checkpoint to dask.distributed workers, once each.

A model passed to ``downscale`` as a Python object is saved to a temporary file on the
client. Workers on other hosts cannot see that file, so when a distributed Client is active
the file's bytes travel once to every worker inside a worker plugin (and again to workers
that join or restart later), which writes them to the same path with the same modification
stamp. Tasks still carry only the small token; workers that already see the file skip it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import WorkerPlugin

from corrdiff_xr._atomic import write_bytes
from corrdiff_xr.inference.cache import ModelToken, _stamp

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["CheckpointPlugin", "share_with_workers"]


class CheckpointPlugin(WorkerPlugin):
    """Writes a checkpoint's bytes on a worker unless it already sees that exact file."""

    def __init__(self, token: ModelToken, payload: bytes):
        self.token = token
        self.payload = payload
        digest = hashlib.blake2b(token.path.encode(), digest_size=8).hexdigest()
        self.name = f"corrdiff-xr-checkpoint-{digest}-{token.stamp}"

    def setup(self, worker: Worker | None = None) -> None:
        path = Path(self.token.path)
        if path.exists() and _stamp(path) == self.token.stamp:
            return
        write_bytes(path, self.payload, fsync=False)
        # the token names the client's stamp; give the copy the same one
        os.utime(path, ns=(self.token.stamp, self.token.stamp))


def share_with_workers(token: ModelToken) -> bool:
    """Register a :class:`CheckpointPlugin` with the active distributed Client, if any."""
    if "distributed" not in sys.modules:
        return False
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return False
    client.register_plugin(CheckpointPlugin(token, Path(token.path).read_bytes()))
    return True
