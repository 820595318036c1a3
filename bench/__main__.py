"""``python -m bench`` from a checkout (``pyopt bench`` when installed): the benchmark suite."""

import sys

from .suite import main

if __name__ == "__main__":
    sys.exit(main())
