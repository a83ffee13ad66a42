"""``python -m benchmarks``: run the overhead benchmark and print its table."""

import sys

from benchmarks.overhead import main

sys.exit(main())
