"""`python -m skinspark.demo` still works: the tool itself is skinspark.tools.demo."""

import sys

from skinspark.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
