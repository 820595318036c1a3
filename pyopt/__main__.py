"""``python -m pyopt``: the ``pyopt`` console script."""

import sys

from pyopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
