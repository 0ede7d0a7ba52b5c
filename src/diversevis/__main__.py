"""``python -m diversevis``: same as the ``diversevis`` command."""

import sys

from diversevis.cli import main

sys.exit(main())
