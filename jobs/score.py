"""The score job as a script, for spark-submit and `python jobs/score.py`; the job itself (flags, exit
codes) is `skinspark.entry.score`, also the console script `skinspark-score`.

    spark-submit jobs/score.py --model out/model --images archive/ --output out/predictions

    spark-submit jobs/score.py --model out/model --table out/ham10000 --output out/test-scores \
        --mlflow sqlite:///mlflow.db
"""

import sys

from skinspark.entry.score import args_parser, main

__all__ = ["args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
