"""`tscm export-descriptors`: global descriptors as hloc's HDF5 (+ pairs-from-retrieval file) and .npy arrays."""

from __future__ import annotations

import argparse

from tscm.inference.choices import BAD_IMAGE_POLICIES, RUNTIMES

NAME = "export-descriptors"
HELP = ("write the global descriptors of an image set in hloc's HDF5 layout (one group per image, dataset "
        "global_descriptor), as .npy arrays with a names file (VPR-methods-evaluation), and optionally an hloc "
        "pairs-from-retrieval file (top-k by exact search)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or exported .onnx model")
    parser.add_argument("--images", required=True, metavar="DIR|CSV",
                        help="the database images: a folder (searched recursively, sorted) or a data-set file "
                             "(CSV manifest, .mat) whose database images are described")
    parser.add_argument("--out", required=True, metavar="FILE.h5",
                        help="HDF5 file to write; FILE.database.npy/.txt (and FILE.queries.npy/.txt) go beside it")
    parser.add_argument("--split", default=None,
                        help="with data-set files: their rows of this split only (default: of every split the file "
                             "holds; the summary names them)")
    parser.add_argument("--queries", metavar="DIR|CSV", default=None,
                        help="a separate query set (a data-set file: its query images); default: the database "
                             "images themselves, as one ordered sequence")
    parser.add_argument("--pairs", metavar="PAIRS.txt", default=None,
                        help="also write hloc's pairs file: 'query db' per line, each query's top-k database images")
    parser.add_argument("-k", type=int, default=20, help="pairs per query (default: 20)")
    parser.add_argument("--exclude-recent", type=int, default=None, metavar="N",
                        help="loop closure within one sequence: pair frame i only with frames j < i - N")
    parser.add_argument("--root", default=None, metavar="DIR",
                        help="folder the image names are relative to (default: the images' folder, or the folder "
                             "holding both sets)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch", help="how the model runs (default: torch)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch / ONNX Runtime")
    parser.add_argument("--on-bad-image", choices=BAD_IMAGE_POLICIES, default="fail",
                        help="an unreadable image stops the export (default) or is reported and left out")


def run(args: argparse.Namespace) -> int:
    from tscm.deploy.retrieval.descriptor_export import ExtractionOptions, RetrievalPairs, export_descriptors

    pairs = RetrievalPairs(args.pairs, args.k, args.exclude_recent)
    extraction = ExtractionOptions(args.runtime, args.batch_size, args.threads, args.on_bad_image)
    done = export_descriptors(args.checkpoint, args.images, args.out, queries=args.queries, split=args.split,
                              root=args.root, pairs=pairs, extraction=extraction)
    sets = f"{done.num_db} images" if done.same_sequence else f"{done.num_db} database + {done.num_queries} query images"
    print(f"wrote {done.h5}: {sets}, {done.dim}-d global_descriptor per image, names relative to {done.root}")
    print("wrote " + ", ".join(str(p) for p in [*done.arrays, *done.names]))
    if done.pairs is not None:
        print(f"wrote {done.pairs}: {done.num_pairs} pairs (top-{args.k} by exact L2 search"
              + (f", frames older than the {args.exclude_recent} before each query" if args.exclude_recent is not None
                 else "") + ")")
    total = done.num_db + (0 if done.same_sequence else done.num_queries)
    print(f"model fingerprint {done.fingerprint}; extraction {done.extract_s:.1f} s "
          f"({1e3 * done.extract_s / max(total, 1):.1f} ms per image)")
    if done.skipped:
        print(f"skipped {len(done.skipped)} unreadable image(s)")
    return 0
