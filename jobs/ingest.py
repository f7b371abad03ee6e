"""The ingest job as a script, for spark-submit and `python jobs/ingest.py`; the job itself (flags, exit
codes) is `skinspark.entry.ingest`, also the console script `skinspark-ingest`.

    spark-submit jobs/ingest.py \
        --images data/HAM10000_images_part_1 data/HAM10000_images_part_2 \
        --metadata data/HAM10000_metadata.csv --output out/ham10000
"""

import sys

from skinspark.entry.ingest import args_parser, main

__all__ = ["args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
