"""``python -m trainers.cli`` is the ``stepbus`` command too (as is ``python -m trainers``)."""

import sys

from trainers.cli import main

sys.exit(main())
