"""``python -m ptfile``: the same as the ``ptfile`` command."""

import sys

from .cli.main import main

sys.exit(main())
