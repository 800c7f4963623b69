"""``python -m corrdiff_xr.cli`` runs the ``corrdiff-xr`` command."""

import sys

from corrdiff_xr.cli import main

sys.exit(main())
