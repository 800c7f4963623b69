"""``python -m corrdiff_xr.cli`` runs the ``corrdiff-xr`` command."""

import sys

from corrdiff_xr.cli import main

if __name__ == "__main__":  # imported (by the API docs, say): define, do not run
    sys.exit(main())
