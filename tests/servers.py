"""Pytest fixtures running real object-store servers on 127.0.0.1 (free ports).

* ``s3_server``: moto's S3 server (``ThreadedMotoServer``); yields an :class:`ObjectStore`
  whose ``storage_options`` make s3fs talk to it.
* ``gcs_server``: gcp-storage-emulator, in memory; yields an :class:`ObjectStore` for gcsfs
  (anonymous token, emulator endpoint).

Both are session-scoped and shut down by the fixture. tests/conftest.py imports them, so
any test module can simply request ``s3_server`` / ``gcs_server``; ``ObjectStore`` is
importable as ``from servers import ObjectStore`` (tests/ is on sys.path under pytest) or
``from tests.servers import ...`` when the repository root is on sys.path.

gcsfs 2026.x probes Google's zonal/hierarchical-namespace API on every call unless
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``; with no network each probe waits ~60 s. The
variable is read when gcsfs is imported, so it is set here, before any import of gcsfs, and
again in ``tests/conftest.py`` for test modules that reach gcsfs without this module.
"""

from __future__ import annotations

import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = ["ObjectStore", "gcs_server", "s3_server"]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ObjectStore:
    """A running local object store: its URL scheme, endpoint and fsspec options."""

    protocol: str
    endpoint_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def filesystem(self):
        """A fresh fsspec filesystem for this server (no instance caching across servers)."""
        import fsspec

        return fsspec.filesystem(self.protocol, skip_instance_cache=True, **self.storage_options)

    def new_bucket(self, prefix: str = "test", *, public_read: bool = False) -> str:
        """Create a uniquely named bucket and return its name.

        ``public_read`` (S3 only) makes the bucket readable without credentials, like a public
        dataset bucket; GCS emulator buckets are readable anonymously anyway.
        """
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        if public_read and self.protocol == "s3":
            # a canned ACL (moto honours it for unsigned GETs; it ignores bucket policies)
            self.filesystem().mkdir(name, acl="public-read")
        else:
            self.filesystem().mkdir(name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ObjectStore]:
    """moto S3 server on 127.0.0.1 with dummy credentials."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": url, "region_name": "eu-west-1"},
        }
        yield ObjectStore("s3", url, options)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[ObjectStore]:
    """gcp-storage-emulator (in memory) on 127.0.0.1, used by gcsfs anonymously."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    pytest.importorskip("gcsfs")
    server = emulator.create_server(HOST, 0, in_memory=True)
    server.start()
    try:
        port = server._api._httpd.server_address[1]  # the emulator has no public getter
        url = f"http://{HOST}:{port}"
        yield ObjectStore("gs", url, {"endpoint_url": url, "token": "anon"})
    finally:
        server.stop()
