"""``python -m diversevis``: same as the ``diversevis`` command."""

import sys

from .cli import main

sys.exit(main())
