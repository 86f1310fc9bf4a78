"""``python -m spap.cli`` (used with ``torchrun -m``) is the ``spap`` command."""

import sys

from spap.cli import main

sys.exit(main())
