"""`tscm visualize RUN`: redraw a run's pictures from results.json, saved descriptors and the data set."""

from __future__ import annotations

import argparse
from pathlib import Path

from tscm.errors import TscmError

NAME = "visualize"
HELP = "Redraw a run's pictures (Recall@N curves, retrieval grids, maps) from its saved descriptors."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run directory holding results.json and descriptors/")
    parser.add_argument("--data", type=Path, default=None,
                        help="data set path, when it moved since the run (default: the path in results.json)")
    parser.add_argument("--split", default=None, help="split to read (default: the split in results.json)")


def run(args: argparse.Namespace) -> int:
    from tscm.data.formats import load_placeset
    from tscm.experiments.plots import draw_run_pictures
    from tscm.experiments.report import descriptor_path, load_descriptors, read_results

    results = read_results(args.run)
    dataset = results["dataset"]
    data_path = args.data if args.data is not None else Path(dataset["path"])
    split = args.split if args.split is not None else dataset["split"]
    placeset = load_placeset(data_path, split)
    if (placeset.num_db, placeset.num_queries) != (dataset["num_db"], dataset["num_queries"]):
        raise TscmError(
            f"{data_path} ({split}): {placeset.num_db} database images and {placeset.num_queries} queries, "
            f"but {args.run / 'results.json'} was measured on {dataset['num_db']} and {dataset['num_queries']}"
        )
    descriptors = {}
    for model in results["models"]:
        if model.get("descriptors"):
            db, queries = load_descriptors(args.run, model["name"])
            if db.ndim != 2 or queries.ndim != 2 or (len(db), len(queries)) != (placeset.num_db, placeset.num_queries):
                raise TscmError(
                    f"{descriptor_path(args.run, model['name'])}: descriptors of shapes {db.shape} and {queries.shape}, "
                    f"but {data_path} ({split}) has {placeset.num_db} database images and {placeset.num_queries} queries"
                )
            descriptors[model["name"]] = (db, queries)
    if not descriptors:
        print(f"{args.run}: no saved descriptors; only the Recall@N curves can be drawn")
    report = draw_run_pictures(args.run, results, placeset, descriptors)
    for path in report.written:
        print(f"wrote {path}")
    for failure in report.failed:
        print(f"failed {failure}")
    return 1 if report.failed else 0
