"""`python -m skinspark.cluster` still works: the tool itself is skinspark.tools.cluster."""

import sys

from skinspark.tools.cluster import main

if __name__ == "__main__":
    sys.exit(main())
