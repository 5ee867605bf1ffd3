"""``python -m dmrnet.cli ...``: the ``dmrnet`` command (torchrun starts it this way)."""

import sys

from dmrnet.cli import main

sys.exit(main())
