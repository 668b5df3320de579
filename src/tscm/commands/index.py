"""`tscm index build`: describe the images of known places with a checkpoint and save them as a place index."""

from __future__ import annotations

import argparse
import math

from tscm.commands.bag_options import add_bag_arguments, bag_selection
from tscm.deploy.retrieval.index_backends import BACKENDS
from tscm.errors import TscmError
from tscm.evaluation.calibration import BOUNDS, DEFAULT_BOUND
from tscm.evaluation.decision import SCORE_NAMES
from tscm.inference.choices import BAD_IMAGE_POLICIES, RUNTIMES

NAME = "index"
HELP = ("build a place index (map) from images of known places: descriptors, ids, coordinates, model fingerprint; "
        "calibrate its acceptance threshold on a validation set or a pair of ROS bags")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="index_action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="extract descriptors of images and write an index file",
                               description="Extract descriptors of images (batched) and write an index file. Under "
                                           "torchrun (e.g. torchrun --nproc_per_node 4 -m tscm index build ...) the "
                                           "images are shared out over the processes and rank 0 writes the file.")
    build.add_argument("--checkpoint", required=True, help="checkpoint directory or exported .onnx model")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR|CSV",
                        help="a folder of images (searched recursively; coordinates from @east@north@ names when "
                             "every image has them), or a data-set file (CSV manifest, Pittsburgh .mat) whose "
                             "database images and coordinates are indexed")
    source.add_argument("--bag", metavar="BAG", help="a ROS bag whose camera frames (and positions) are indexed")
    build.add_argument("--split", default=None,
                       help="with a data-set file: index the database rows of this split only (default: of every "
                            "split the file holds; the summary names them)")
    build.add_argument("--out", required=True, metavar="MAP", help="index file to write (safetensors)")
    build.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                       help="search back-end (default: auto, chosen by database size)")
    build.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="back-end parameter, e.g. pca_dim=256, nlist=256, ef_search=64 (repeatable)")
    build.add_argument("--runtime", choices=RUNTIMES, default="torch",
                       help="how the model runs (default: torch); onnx-int8 calibrates on the indexed images")
    build.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    build.add_argument("--threads", type=int, default=None, help="CPU threads for torch / ONNX Runtime")
    build.add_argument("--on-bad-image", choices=BAD_IMAGE_POLICIES, default="fail",
                       help="an unreadable image stops the build (default) or is reported and left out")
    add_bag_arguments(build)
    calibrate = actions.add_parser(
        "calibrate", help="choose the distance below which a match is accepted, for a target precision",
        description="Calibrate the index's acceptance threshold on a validation split with ground truth (the model "
                    "recorded in the index describes it), for a target precision; store it in the index file.")
    calibrate.add_argument("--index", required=True, metavar="MAP", help="index file (rewritten with the threshold)")
    calibrate.add_argument("--data", required=True,
                           help="data set with ground truth (e.g. the Nordland folder), or a ROS bag whose frames are "
                                "the database, with --query-bag for the queries (ground truth by position)")
    calibrate.add_argument("--split", default="val",
                           help="split to calibrate on (default: val; never test; with a bag it only labels the frames)")
    calibrate.add_argument("--target-precision", type=float, default=99.0, help="percent (default: 99)")
    calibrate.add_argument("--sequence", type=int, default=1, metavar="L",
                           help="calibrate the score of L-frame sequences (query_sequence) instead of single frames")
    calibrate.add_argument("--radius", type=float, default=None, help="true-match radius in the data's unit (default: 25 m / ±1 frame)")
    calibrate.add_argument("--measure", default=None, metavar="SPLIT",
                           help="also report the precision and recall the threshold reaches on this split (e.g. test)")
    calibrate.add_argument("--checkpoint", default=None, help="the model (default: the one recorded in the index)")
    calibrate.add_argument("--score", choices=("auto", *SCORE_NAMES), default="auto",
                           help="decision score: top-1 distance, distinctiveness ratio, per-query normalised distance; "
                                "auto (default) keeps the one with the highest recall on the calibration split")
    calibrate.add_argument("--bound", choices=BOUNDS, default=DEFAULT_BOUND,
                           help="precision that must reach the target: the one-sided Clopper-Pearson lower bound "
                                "(default) or the plain precision of the calibration split (none)")
    calibrate.add_argument("--confidence", type=float, default=95.0,
                           help="confidence of the lower bound on precision, percent (default: 95)")
    calibrate.add_argument("--unseen", action=argparse.BooleanOptionalAction, default=True,
                           help="count each query's never-seen twin too (the query scored with its place cut out of "
                                "the database; accepting it is a false closure), so the threshold also refuses places "
                                "the map lacks, as on a robot's first pass (default: on; --no-unseen calibrates on "
                                "matched queries only, as earlier tscm did)")
    calibrate.add_argument("--json", default=None, metavar="OUT",
                           help="also write the calibration (threshold, score, target, calibration and measured "
                                "precision and recall as fractions) to this JSON file")
    add_bag_arguments(calibrate, query_bag=True)


def _calibrate(args: argparse.Namespace) -> int:
    from tscm.deploy.retrieval.calibration import calibrate_index_file

    # Checked here, in the user's units (percent, frames), before anything is described.
    if not (math.isfinite(args.target_precision) and 0 < args.target_precision <= 100):
        raise TscmError(f"--target-precision: expected a percentage in (0, 100], got {args.target_precision:g}")
    if args.sequence < 1:
        raise TscmError(f"--sequence: expected a sequence length ≥ 1 frame, got {args.sequence}")
    if not (math.isfinite(args.confidence) and 0 < args.confidence < 100):
        raise TscmError(f"--confidence: expected a percentage in (0, 100), got {args.confidence:g}")
    report = calibrate_index_file(args.index, args.data, split=args.split, target_precision=args.target_precision / 100,
                                  sequence_length=args.sequence, radius=args.radius, measure_split=args.measure,
                                  checkpoint=args.checkpoint, score=args.score, bound=args.bound,
                                  confidence=args.confidence / 100, json_path=args.json, bag=bag_selection(args),
                                  unseen=args.unseen)
    entry = report["threshold"]
    what = "single frames" if entry["sequence_length"] == 1 else f"sequences of {entry['sequence_length']} frames"
    bound = (f", {100 * entry['confidence']:g} % lower bound {100 * entry['precision_bound']:.1f} %"
             if entry["bound"] != "none" else "")
    print(f"threshold {entry['distance']:.6g} on score {entry['score']} ({what}, {entry['space']['backend']} space) "
          f"calibrated on {entry['calibrated_on']}: precision {100 * entry['precision']:.1f} %{bound} "
          f"(target {100 * entry['target_precision']:g} %{', never-seen twins counted' if entry.get('unseen') else ''}), "
          f"recall {100 * entry['recall']:.1f} %; written to {args.index}")
    if "measured" in report:
        m = report["measured"]
        print(f"on {m['measured_on']}: precision {100 * m['precision']:.1f} %, recall {100 * m['recall']:.1f} % "
              f"({m['accepted_count']} accepted, {m['false_positive_count']} false, of {m['num_queries']} queries)"
              + (f"; never-seen twins accepted: {100 * m['unseen_accepted']:.1f} % of {m['unseen_count']}"
                 if m.get("unseen_accepted") is not None else ""))
        if m["below_target"]:
            print(f"warning: the threshold does not hold on {m['measured_on']}: its precision there is below the "
                  f"{100 * entry['target_precision']:g} % target with {100 * m['confidence']:g} % confidence (upper bound "
                  f"{100 * m['precision_upper_bound']:.1f} %): these places are harder than {entry['calibrated_on']}'s; "
                  + ("sequences (--sequence L) carry a threshold further, or " if entry["sequence_length"] == 1 else "")
                  + "calibrate on data like the deployment's")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _positions(built) -> str:
    if not built.has_positions:
        return "no"
    return "frame numbers" if built.index.position_unit == "frame" else "yes (east, north in metres)"


def run(args: argparse.Namespace) -> int:
    from tscm.deploy.retrieval.map_builder import build_map, parse_params

    if args.index_action == "calibrate":
        return _calibrate(args)

    built = build_map(args.checkpoint, args.bag or args.images, args.out, backend=args.backend,
                      params=parse_params(args.param), runtime=args.runtime, batch_size=args.batch_size,
                      threads=args.threads, on_bad_image=args.on_bad_image, bag=bag_selection(args),
                      split=args.split)
    if not built.is_main:  # under torchrun rank 0 writes the file and reports
        return 0
    index = built.index
    print(f"wrote {args.out}: {index.count} places, {index.dim}-d descriptors, backend {index.backend} "
          f"{index.params}, {index.memory_bytes / 2**20:.1f} MB, coordinates: {_positions(built)}")
    print(f"model {built.preset} ({args.runtime}), fingerprint {built.fingerprint}")
    print(f"extraction {built.extract_s:.1f} s ({1e3 * built.extract_s / built.kept:.1f} ms per image"
          + (f" over {built.world_size} processes, {built.kept / max(built.extract_s, 1e-9):.1f} images/s"
             if built.world_size > 1 else "") + f"), index build {built.build_s:.1f} s")
    if built.skipped:  # each was reported as it happened; the count closes the summary
        print(f"skipped {len(built.skipped)} unreadable image(s)")
    return 0
