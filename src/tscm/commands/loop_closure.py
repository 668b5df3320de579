"""`tscm loop-closure`: loop closures over one traversal recorded in a ROS bag."""

from __future__ import annotations

import argparse
import importlib.util

from tscm.commands.bag_options import add_bag_arguments
from tscm.errors import TscmError
from tscm.inference.choices import RUNTIMES

NAME = "loop-closure"
HELP = ("Loop closures within one robot traversal (a ROS bag's camera topic): every frame is matched against the "
        "traversal's earlier frames; writes loop_closures.csv and a trajectory picture.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="ROS 1 .bag, ROS 2 .db3 / .mcap, or a ROS 2 bag folder")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or exported .onnx model")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for loop_closures.csv and the picture")
    parser.add_argument("--exclude-recent", type=float, default=30.0, metavar="SECONDS",
                        help="the robot's own frames of the last SECONDS are never its loop closures (default: 30)")
    parser.add_argument("--sequence", type=int, default=1, metavar="L",
                        help="score each frame by its last L frames (SeqSLAM-style; default 1: single frames)")
    parser.add_argument("--index", default=None, metavar="MAP",
                        help="an index file calibrated with this model (tscm index calibrate): its "
                             "threshold decides 'accepted'; without it every best match is listed unaccepted")
    parser.add_argument("--rerun", default=None, metavar="FILE.rrd",
                        help="also write a Rerun recording of frames, trajectory and loop closures (pip install 'tscm[rerun]')")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch", help="how the model runs (default: torch)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch / ONNX Runtime")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_bag_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tscm.data.formats.rosbag import read_bag_traversal
    from tscm.experiments.traversal_loop_closure import check_loop_closure_outputs, run_loop_closure

    if args.threads is not None and args.threads < 1:
        raise TscmError(f"--threads: expected a number of threads ≥ 1, got {args.threads}")
    # before the bag is read
    check_loop_closure_outputs(args.bag, args.checkpoint, args.out, index=args.index, rerun=args.rerun)
    traversal = read_bag_traversal(args.bag, args.topic, args.position_topic, args.every)
    print(traversal.describe())
    result = run_loop_closure(traversal, args.checkpoint, args.out, exclude_recent=args.exclude_recent,
                              sequence=args.sequence, index=args.index, rerun=args.rerun, runtime=args.runtime,
                              threads=args.threads, progress=not args.no_progress)
    if result.threshold is None:
        decision = "no calibrated threshold (--index): every best match listed, none accepted"
    else:
        decision = f"threshold {result.threshold['distance']:.6g} from {args.index}"
    per_frame = 1e3 * result.seconds / max(len(result.rows), 1)
    print(f"{len(result.rows)} frames, {result.matched} with an earlier frame to match, {result.accepted} accepted "
          f"loop closures ({decision}); {per_frame:.1f} ms per frame")
    print(f"wrote {result.csv_path} and {result.picture}" + (f" and {result.rerun_path}" if result.rerun_path else ""))
    if args.runtime == "torch" and importlib.util.find_spec("onnxruntime") is not None:
        print("tip: most of a frame's time is eager PyTorch describing one small image; --runtime onnx does it several "
              "times faster in the same descriptor space (the index and threshold still apply)")
    return 0
