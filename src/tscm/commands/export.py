"""`tscm export CKPT --onnx OUT.onnx`: a checkpoint as one ONNX file with a dynamic batch axis and tscm metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

from tscm.errors import TscmError
from tscm.fileio import check_outputs
from tscm.inference.choices import DEFAULT_CALIBRATION_IMAGES, DEFAULT_OPSET, EXPORTERS, PRECISIONS

NAME = "export"
HELP = ("export a teacher or student checkpoint to ONNX (dynamic batch, fingerprint/image size/mean/std in "
        "metadata_props), float32 checked against PyTorch, int8 calibrated on a data set's images, or auto: "
        "int8 only if it is faster on this machine")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory (model.safetensors + meta.json)")
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="output file (its folder is created if missing)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="float32; int8 (convolutions and weight matrix products quantised statically; needs "
                             "--calibration); or auto: build both, time them here at batch 1 and keep int8 only when "
                             "it is faster (needs --calibration; the choice and timings go into the metadata)")
    parser.add_argument("--threads", type=int, default=None,
                        help="auto: ONNX Runtime threads to time with, as the deployment will run (default: all cores)")
    parser.add_argument("--calibration", metavar="DATA", default=None,
                        help="data set (folder, .mat, .csv, .npz) whose database images calibrate int8")
    parser.add_argument("--calibration-split", default="train", help="split of --calibration to use (default: train)")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        help=f"how many images calibrate int8 (default: {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="torch.export-based exporter (default) or the legacy TorchScript one (faster to run)")
    parser.add_argument("--no-parity-check", action="store_true",
                        help="skip comparing the export's descriptors with PyTorch's")


def run(args: argparse.Namespace) -> int:
    from tscm.inference.onnx_export import calibration_subset, export_onnx

    calibration = []
    if args.threads is not None and args.threads < 1:
        raise TscmError(f"--threads: expected a positive number, got {args.threads}")
    if args.threads is not None and args.precision != "auto":
        raise TscmError("--threads is only used with --precision auto (the timing that chooses the precision)")
    if args.precision in ("int8", "auto"):
        if args.calibration is None:
            raise TscmError(f"--precision {args.precision} needs --calibration DATA (images to choose the activation "
                            "ranges)")
        if args.calibration_images < 1:
            raise TscmError(f"--calibration-images: expected a positive number, got {args.calibration_images}")
        from tscm.data.formats import load_placeset

        placeset = load_placeset(args.calibration, split=args.calibration_split)
        calibration = calibration_subset(placeset.db_paths, args.calibration_images)
    elif args.calibration is not None:
        raise TscmError("--calibration is only used with --precision int8 or auto")

    inputs = {"the checkpoint": [Path(args.checkpoint)], "a calibration image": calibration}
    if args.calibration is not None and Path(args.calibration).is_file():
        inputs["the --calibration data-set file"] = [Path(args.calibration)]
    check_outputs({"--onnx": args.onnx}, inputs)
    meta = export_onnx(args.checkpoint, args.onnx, opset=args.opset, exporter=args.exporter, precision=args.precision,
                       calibration_paths=calibration, check_parity=not args.no_parity_check, threads=args.threads)
    size_mb = Path(args.onnx).stat().st_size / 2**20
    height, width = meta["image_size"]
    print(f"wrote {args.onnx} ({size_mb:.1f} MB): {meta['preset']} {meta['precision']}, input images B×3×{height}×{width}, "
          f"output descriptors B×{meta['descriptor_dim']}, fingerprint {meta['fingerprint']}")
    if calibration:
        print(f"int8 calibrated on {len(calibration)} images of {args.calibration} ({args.calibration_split} split)")
    choice = meta.get("precision_choice")
    if choice:
        timings = choice["ms_per_image"]
        print(f"precision auto: kept {choice['chosen']} (batch 1, {choice['threads'] or 'default'} threads, median of "
              f"{choice['calls']} calls: float32 {timings['float32']:.1f} ms, int8 {timings['int8']:.1f} ms on "
              f"{choice['cpu']})")
    return 0
