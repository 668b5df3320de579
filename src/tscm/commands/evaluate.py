"""`tscm evaluate`: Recall@N and precision-recall of descriptors (given, or computed by a checkpoint) on a data set."""

from __future__ import annotations

import argparse

from tscm.commands.bag_options import add_bag_arguments, bag_selection
from tscm.errors import TscmError

NAME = "evaluate"
HELP = ("Recall@N (exact L2 search) and precision-recall of descriptors or a checkpoint on a data set; the radius is "
        "in the data set's unit (metres, or ±frames); --radius 10 reproduces the published TSCM code.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data set: folder, Pittsburgh .mat, CSV manifest, ground-truth .npz, Nordland or VPR-Bench folder, ROS bag")
    parser.add_argument("--split", default=None, help="split to evaluate (default: test; a .mat file's own split)")
    parser.add_argument("--name", default=None, help="data-set name when a folder holds several (e.g. pitts30k)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--descriptors", help="an .npz with 'db' (num_db×D) and 'queries' (num_queries×D), rows in the data set's order")
    source.add_argument("--checkpoint", help="a tscm checkpoint directory or exported .onnx; its model computes the descriptors")
    parser.add_argument("--radius", type=float, default=None,
                        help="a database image within this distance is a true match, in the data set's unit: metres "
                             "(default 25; 10 = published TSCM code) or ±frames (default 1); ignored for listed matches")
    parser.add_argument("--sequence", type=int, default=1, metavar="L",
                        help="score sequences of the last L queries (SeqSLAM-style; frame-ordered data; default 1: single frames)")
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 5, 10, 20], help="N values of Recall@N (default: 1 5 10 20)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    parser.add_argument("--save-descriptors", default=None, help="with --checkpoint: write the descriptors to this .npz")
    parser.add_argument("--batch-size", type=int, default=32, help="with --checkpoint: images per batch (default: 32)")
    parser.add_argument("--device", default="cpu", help="with --checkpoint: torch device (default: cpu)")
    parser.add_argument("--num-workers", type=int, default=0, help="with --checkpoint: image-loading processes (default: 0)")
    add_bag_arguments(parser, query_bag=True)


def run(args: argparse.Namespace) -> int:
    from tscm.data.formats import load_placeset
    from tscm.evaluation.protocol import evaluate_data_set

    placeset = load_placeset(args.data, split=args.split, name=args.name, bag=bag_selection(args))
    if placeset.num_queries == 0:
        raise TscmError(f"{args.data}: no queries to evaluate (a bag alone is a map: give the query traversal "
                        "with --query-bag BAG)")
    result = evaluate_data_set(placeset, descriptors=args.descriptors, checkpoint=args.checkpoint, radius=args.radius,
                               ns=args.ns, sequence=args.sequence, save_descriptors=args.save_descriptors,
                               json_path=args.json, batch_size=args.batch_size, device=args.device,
                               num_workers=args.num_workers, data_path=args.data)
    print(result.format_table())
    return 0
