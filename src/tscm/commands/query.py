"""`tscm query --index MAP IMG...`: the nearest known places of each image."""

from __future__ import annotations

import argparse
import json
import sys

from tscm.errors import TscmError
from tscm.inference.choices import BAD_IMAGE_POLICIES, RUNTIMES as ALL_RUNTIMES

NAME = "query"
HELP = "print the top-k known places (id, path, distance, coordinates) of images, searched in a place index"
RUNTIMES = tuple(r for r in ALL_RUNTIMES if r != "onnx-int8")  # onnx-int8 needs calibration images: export it instead


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMG", help="query image file(s)")
    parser.add_argument("--index", required=True, metavar="MAP", help="index file written by `tscm index build`")
    parser.add_argument("-k", type=int, default=5, help="places per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--checkpoint", default=None,
                        help="model to describe the images (default: the one recorded in the index); its "
                             "fingerprint must be the index's")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch", help="how the model runs (default: torch)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch / ONNX Runtime")
    parser.add_argument("--on-bad-image", choices=BAD_IMAGE_POLICIES, default="fail",
                        help="an unreadable query image is an error (default) or is reported and left out")


def _format_place(place, unit: str) -> str:
    if place.xy is None:
        where = ""
    elif unit == "frame":  # a frame-numbered map stores (frame, 0): no east or north to speak of
        where = f"  frame {place.xy[0]:.0f}"
    else:
        where = f"  east {place.xy[0]:.1f} north {place.xy[1]:.1f}"
    decision = "" if place.accepted is None else f"  {'ACCEPTED' if place.accepted else 'rejected'}"
    if place.decision_score is not None:  # only the places the threshold's decision score speaks for
        decision += f" ({place.score_name} {place.decision_score:.4g}, confidence {place.confidence:.2f})"
    return f"  {place.rank:>2}. id {place.id:<8} distance {place.distance:.4f}{decision}{where}  {place.path or '-'}"


def _place_json(place, unit: str) -> dict:
    entry = place.to_json()
    if unit == "frame":
        frame = entry.pop("east")
        entry.pop("north")
        entry["frame"] = None if frame is None else int(round(frame))
    return entry


def run(args: argparse.Namespace) -> int:
    from tscm.deploy.retrieval.recognizer import PlaceRecognizer

    if args.k < 1:
        raise TscmError(f"-k: expected a positive number, got {args.k}")
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise TscmError(f"--threads: expected a positive number, got {args.threads}")
        torch.set_num_threads(args.threads)
    recognizer = PlaceRecognizer.load(args.index, args.checkpoint, runtime=args.runtime, threads=args.threads)
    described = recognizer.describe(args.images, on_bad_image=args.on_bad_image,
                                    report=lambda line: print(line, file=sys.stderr))
    results = recognizer.search(described.descriptors, args.k) if described.kept else []
    found = {position: places for position, places in zip(described.kept, results)}
    skipped = dict(described.skipped)
    threshold = recognizer.threshold
    unit = recognizer.index.position_unit
    if threshold is None:
        stale = bool(recognizer.index.stale_thresholds())
        note = ("this index's threshold was calibrated in another search space (the index was rebuilt); calibrate "
                "again" if stale else "this index has no acceptance threshold: places are ranked, not accepted; "
                "calibrate one with `tscm index calibrate`")
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        entries = [{"image": str(image), "places": [_place_json(p, unit) for p in found[i]]} if i in found
                   else {"image": str(image), "error": skipped[str(image)]} for i, image in enumerate(args.images)]
        print(json.dumps({"index": args.index, "k": args.k, "fingerprint": recognizer.fingerprint,
                          "backend": recognizer.index.backend, "threshold": threshold, "queries": entries}, indent=2))
    else:
        for position, image in enumerate(args.images):
            if position not in found:
                print(f"{image}: skipped ({skipped[str(image)]})")
                continue
            print(f"{image}:")
            for place in found[position]:
                print(_format_place(place, unit))
    return 0 if described.kept else 2
