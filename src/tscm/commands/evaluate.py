"""`tscm evaluate`: Recall@N of database/query descriptors (given, or computed by a checkpoint) on a data set."""

from __future__ import annotations

import argparse

NAME = "evaluate"
HELP = "Recall@N (exact L2 search) of descriptors or a checkpoint on a data set; --radius 10 reproduces the published TSCM code."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data set: folder, Pittsburgh .mat, CSV manifest or ground-truth .npz")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--name", default=None, help="data-set name when a folder holds several (e.g. pitts30k)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--descriptors", help="an .npz with 'db' (num_db×D) and 'queries' (num_queries×D), rows in the data set's order"
    )
    source.add_argument("--checkpoint", help="a tscm checkpoint directory; its model computes the descriptors")
    parser.add_argument(
        "--radius",
        type=float,
        default=25.0,
        help="metres within which a database image is a true match (default: 25; 10 = published TSCM code)",
    )
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 5, 10, 20], help="N values of Recall@N (default: 1 5 10 20)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    parser.add_argument("--save-descriptors", default=None, help="with --checkpoint: write the descriptors to this .npz")
    parser.add_argument("--batch-size", type=int, default=32, help="with --checkpoint: images per batch (default: 32)")
    parser.add_argument("--device", default="cpu", help="with --checkpoint: torch device (default: cpu)")
    parser.add_argument("--num-workers", type=int, default=0, help="with --checkpoint: image-loading processes (default: 0)")


def _load_descriptors(path: str):
    import zipfile

    import numpy as np

    from tscm.errors import TscmError

    try:
        with np.load(path, allow_pickle=False) as contents:
            missing = [k for k in ("db", "queries") if k not in contents]
            if missing:
                raise TscmError(f"{path}: missing array(s) {missing}; found {sorted(contents.files)}")
            return contents["db"], contents["queries"]
    except FileNotFoundError:
        raise TscmError(f"{path}: descriptor file not found") from None
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise TscmError(f"{path}: not a readable .npz without pickled objects: {error}") from None


def _compute_descriptors(args: argparse.Namespace, placeset):
    import numpy as np

    from tscm.models.checkpoint import load_checkpoint
    from tscm.data.formats import is_placeholder_path
    from tscm.errors import TscmError
    from tscm.evaluation.recall import extract_descriptors
    from tscm.fileio import atomic_path

    if any(is_placeholder_path(p) for p in placeset.db_paths + placeset.query_paths):
        raise TscmError(f"{args.data}: the data set does not name its images, so a model cannot describe them; use --descriptors")
    model, meta = load_checkpoint(args.checkpoint)
    model.to(args.device)
    settings = dict(image_size=meta["image_size"], mean=meta["mean"], std=meta["std"], batch_size=args.batch_size,
                    device=args.device, num_workers=args.num_workers)
    db = extract_descriptors(model, placeset.db_paths, **settings)
    queries = extract_descriptors(model, placeset.query_paths, **settings)
    if args.save_descriptors:
        with atomic_path(args.save_descriptors) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, db=db, queries=queries)
    return db, queries


def run(args: argparse.Namespace) -> int:
    from tscm.data.formats import load_placeset
    from tscm.errors import TscmError
    from tscm.evaluation.recall import evaluate_descriptors
    from tscm.fileio import write_json_atomic

    if args.save_descriptors and not args.checkpoint:
        raise TscmError("--save-descriptors needs --checkpoint (with --descriptors they are already saved)")
    placeset = load_placeset(args.data, split=args.split, name=args.name)
    if args.checkpoint:
        db, queries = _compute_descriptors(args, placeset)
    else:
        db, queries = _load_descriptors(args.descriptors)
    result = evaluate_descriptors(placeset, db, queries, radius_m=args.radius, ns=args.ns)
    print(result.format_table())
    if args.json:
        write_json_atomic(args.json, result.to_json())
    return 0
