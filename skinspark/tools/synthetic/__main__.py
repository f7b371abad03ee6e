"""`python -m skinspark.tools.synthetic`: write a synthetic HAM10000 dataset."""

import sys

from skinspark.tools.synthetic import main

sys.exit(main())
