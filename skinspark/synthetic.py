"""`python -m skinspark.synthetic` still works: the tool itself is skinspark.tools.synthetic."""

import sys

from skinspark.tools.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
