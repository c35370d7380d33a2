"""``python -m cora``: the ``cora`` command."""

import sys

from cora.cli import main

sys.exit(main())
