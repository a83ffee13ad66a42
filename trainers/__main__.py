"""``python -m trainers`` is the ``stepbus`` command."""

import sys

from trainers.cli import main

sys.exit(main())
