"""`tscm bench`: extraction, accuracy per runtime, matching and mining timed side by side on this machine."""

from __future__ import annotations

import argparse

from tscm.bench.settings import BENCH_RUNTIMES, KERNELS, PARTS, STREAMING_RUNTIMES, BenchSettings
from tscm.config.fields import build_settings, flags_given
from tscm.config.quick import QUICK_BENCH

NAME = "bench"
HELP = ("measure the machine (CPU, ISA, fp32 peak, bandwidth), then time descriptor extraction (teacher vs student, "
        "eager vs ONNX Runtime vs quantised), accuracy per runtime, matching per search back-end (10k/250k synthetic "
        "descriptors and the synthetic city), the mining refresh and training throughput; GPU rows where CUDA is visible")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("parts", nargs="*", choices=[*PARTS, []], metavar="PART",
                        help=f"what to run, some of {', '.join(PARTS)} (default: extraction matching city)")
    parser.add_argument("--out", default=None, metavar="DIR", help="write bench.json and bench.md here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test in seconds: tiny sizes, student-tiny, tiny city (numbers are not meaningful)")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime / faiss threads (default: 2)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-gpu", dest="gpu", action="store_false", default=None,
                        help="skip the GPU rows even where a CUDA device is visible")
    extraction = parser.add_argument_group("extraction and accuracy")
    extraction.add_argument("--models", nargs="+", default=None,
                            help="checkpoint directories or presets (default: student-paper teacher-paper, 224×224)")
    extraction.add_argument("--runtimes", nargs="+", choices=BENCH_RUNTIMES, default=None,
                            help="default: all (onnx-auto: onnx-int8 with precision auto, the graph it keeps)")
    extraction.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 16")
    extraction.add_argument("--cycles", type=int, default=None, help="turns of every runtime (default: 3)")
    extraction.add_argument("--calls", type=int, default=None, help="timed calls per turn (default: 5)")
    extraction.add_argument("--budget", type=float, default=None, help="seconds of timing per model and batch size")
    extraction.add_argument("--checkpoint", default=None,
                            help="accuracy: the checkpoint compared per runtime; city: the model describing the city "
                                 "(default: an untrained student-tiny)")
    extraction.add_argument("--accuracy-data", default=None, help="accuracy: data set (default: synthetic:demo)")
    extraction.add_argument("--accuracy-split", default=None, help="accuracy: split (default: test)")
    matching = parser.add_argument_group("matching")
    matching.add_argument("--sizes", type=int, nargs="+", default=None, help="synthetic database sizes (default: 10000 250000)")
    matching.add_argument("--dim", type=int, default=None, help="synthetic descriptor dimension (default: 2048)")
    matching.add_argument("--queries", type=int, default=None, help="queries per synthetic database (default: 1000)")
    matching.add_argument("--single", type=int, default=None, help="queries timed one at a time (default: 200)")
    matching.add_argument("--rounds", type=int, default=None,
                          help="turns of (single queries, batch), measured side by side (default: 3)")
    matching.add_argument("--city", default=None, help="synthetic city preset (default: demo)")
    matching.add_argument("--city-split", default=None, help="split whose database and queries are matched")
    matching.add_argument("--radius", type=float, default=None, help="metres for a correct match (default: 25)")
    mining = parser.add_argument_group("mining")
    mining.add_argument("--mining-db", type=int, default=None, help="database size (default: 10000, Pittsburgh30k)")
    mining.add_argument("--mining-queries", type=int, default=None, help="queries (default: 7416)")
    streaming = parser.add_argument_group("streaming")
    streaming.add_argument("--streaming-sizes", type=int, nargs="+", default=None,
                           help="map sizes in entries (default: 1000 10000 100000)")
    streaming.add_argument("--streaming-runtimes", nargs="+", choices=STREAMING_RUNTIMES, default=None,
                           help="default: torch onnx")
    streaming.add_argument("--streaming-exclude-recent", type=int, default=None, metavar="FRAMES",
                           help="observe: the newest FRAMES map entries are never a frame's loop closure (default: 20; "
                                "a robot at 30 frames/s leaving out its last 30 s: 900)")
    training = parser.add_argument_group("training")
    training.add_argument("--training-presets", nargs="+", default=None, help="model presets (default: teacher-tiny student-tiny)")
    training.add_argument("--training-steps", type=int, default=None, help="timed steps per turn (default: 10)")
    training.add_argument("--training-kernels", nargs="+", choices=KERNELS, default=None,
                          help="tscm's training kernels, and/or the library's (depthwise weight gradient, unfolded "
                               "batch norms) timed beside them (default: tscm)")


def run(args: argparse.Namespace) -> int:
    from tscm.bench.suite import run_bench

    settings = build_settings(BenchSettings, QUICK_BENCH if args.quick else {}, flags_given(args, BenchSettings))
    run_bench(settings, args.out)
    return 0
