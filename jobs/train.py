"""The train job as a script, for spark-submit and `python jobs/train.py`; the job itself (flags, exit
codes) is `skinspark.entry.train`, also the console script `skinspark-train`.

    spark-submit jobs/train.py --data out/ham10000 --output out/model --epochs 25 --batch-size 32
    spark-submit jobs/train.py --data out/ham10000 --output out/model --backend tf_distribute
    spark-submit jobs/train.py --data out/ham10000-folds --output out/cv --cross-validate
    spark-submit jobs/train.py --data out/ham10000 --output out/model --mlflow sqlite:///mlflow.db \
        --register-model skin-lesion-cnn
"""

import sys

from skinspark.entry.train import args_parser, main

__all__ = ["args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
