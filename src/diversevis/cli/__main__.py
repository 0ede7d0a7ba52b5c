"""``python -m diversevis.cli``: the same as the ``diversevis`` command."""

import sys

from diversevis.cli import main

sys.exit(main())
