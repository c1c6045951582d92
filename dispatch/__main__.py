"""``python -m dispatch``: see :mod:`dispatch.cli`."""

import sys

from dispatch.cli import main

sys.exit(main())
