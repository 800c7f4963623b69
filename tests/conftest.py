"""Shared pytest configuration.

gcsfs reads ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` at import; without ``false`` every call
probes a Google API and, offline, waits ~60 s. Set it before any test module imports gcsfs.
The object-store server fixtures (``s3_server``, ``gcs_server``) live in tests/servers.py and
are made available to every test module here.
"""

from __future__ import annotations

import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from tests.servers import gcs_server, s3_server  # noqa: F401
