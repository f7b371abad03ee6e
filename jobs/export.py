"""The export job as a script (it needs no Spark); the job itself (flags, exit codes) is
`skinspark.entry.export`, also the console script `skinspark-export`.

    python jobs/export.py --model out/model --format tflite [--quantize none|float16|int8]
"""

import sys

from skinspark.entry.export import args_parser, main

__all__ = ["args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
