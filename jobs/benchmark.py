"""The benchmark job as a script, for spark-submit and `python jobs/benchmark.py`; the job itself (flags, exit
codes) is `skinspark.entry.benchmark`, also the console script `skinspark-benchmark`.

    spark-submit --master 'local[2]' jobs/benchmark.py --work bench-output --images 10015
    spark-submit --master 'local[2]' jobs/benchmark.py --work bench-output --sections learning
"""

import sys

from skinspark.entry.benchmark import args_parser, main

__all__ = ["args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
