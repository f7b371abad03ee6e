"""`python -m skinspark.tools.cluster`."""

import sys

from skinspark.tools.cluster.cli import main

if __name__ == "__main__":
    sys.exit(main())
