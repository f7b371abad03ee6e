"""Export a trained model for the edge: TensorFlow Lite, checked against the Keras model.

    python jobs/export.py --model out/model --format tflite [--quantize none|float16|int8]

Also the console script `skinspark-export ...`. Writes MODEL_DIR/tflite-<quantize>/ (or --output):
model.tflite, labels.json, preprocessing.json and export.json (agreement with Keras on the test split,
file size, milliseconds per image on one thread). Exit codes: 0 done, 1 the export's agreement is
below its target with --strict, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import sys

from skinspark.cli import fail
from skinspark.export import (
    CALIBRATION_IMAGES,
    FORMATS,
    QUANTIZATIONS,
    ExportError,
    export_summary,
    export_tflite,
)


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, metavar="MODEL_DIR", help="a trained model directory")
    parser.add_argument("--format", choices=FORMATS, default="tflite", help="the export format (tflite)")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="none",
        help="none (float32), float16 (weights), int8 (weights and activations, calibrated on the val split)",
    )
    parser.add_argument(
        "--output", default=None, help="output directory (default MODEL_DIR/tflite-<quantize>)"
    )
    parser.add_argument(
        "--data", default=None, help="the ingested table to calibrate and check on (default: the model's own)"
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help="int8: validation images to calibrate on",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when the argmax agreement with Keras is below its target",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = args_parser().parse_args(argv)
    if args.calibration_images < 1:
        return fail("export", f"--calibration-images must be at least 1, got {args.calibration_images}")
    try:
        report = export_tflite(args.model, args.output, args.quantize, args.data, args.calibration_images)
    except (ExportError, ValueError, OSError) as error:
        return fail("export", str(error))
    print(export_summary(report))
    if args.strict and not report["meets_target"]:
        return fail(
            "export", f"argmax agreement {report['argmax_agreement']:.2%} is below the target", code=1
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
