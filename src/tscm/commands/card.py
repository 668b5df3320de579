"""`tscm card CKPT --out DIR`: a checkpoint as a folder ready to publish, with a Hugging Face model card."""

from __future__ import annotations

import argparse

from tscm.errors import TscmError

NAME = "card"
HELP = ("write a publishable folder for a checkpoint: model.safetensors and meta.json (byte-identical copies) and a "
        "README.md model card (Hugging Face front matter with model-index, Recall@N/PR from a run's results.json, "
        "input size and normalisation, ms per image measured here, SHA-256, how to load it)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", nargs="?", default=None,
                        help="checkpoint folder (model.safetensors + meta.json), or hf://user/name or an https URL "
                             "of a published one (needs the network)")
    parser.add_argument("--from-hub", metavar="USER/NAME", default=None,
                        help="the published Hugging Face model repository USER/NAME[@REVISION] instead of CKPT "
                             "(needs the network)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (created if missing)")
    parser.add_argument("--results", metavar="RUN/results.json", default=None,
                        help="a run's results.json (or its folder): the checkpoint's entry gives the Recall@N / PR "
                             "numbers and the model-index metadata")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="the entry of --results to use when the checkpoint is not matched by fingerprint or path")
    parser.add_argument("--name", default=None, help="the card's title and model-index name (default: tscm-<model>)")
    parser.add_argument("--license", default="mit", help="license identifier in the front matter (default: mit)")
    parser.add_argument("--repo-id", default=None, metavar="USER/NAME",
                        help="where the folder will be published, for the loading examples (hf://USER/NAME)")
    parser.add_argument("--sha256", default=None, help="expected SHA-256 of a remote model.safetensors")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the timing")
    parser.add_argument("--no-timing", action="store_true", help="leave out the ms-per-image measurement")


def run(args: argparse.Namespace) -> int:
    from tscm.deploy.packaging.hub import hub_id_url
    from tscm.deploy.packaging.model_card import write_model_card

    if (args.checkpoint is None) == (args.from_hub is None):
        raise TscmError("give either CKPT or --from-hub USER/NAME (one of them)")
    source = args.checkpoint
    if args.from_hub is not None:
        hub_id_url(args.from_hub)  # checks the id's form before any download
        source = args.from_hub if args.from_hub.startswith("hf://") else f"hf://{args.from_hub}"
    card = write_model_card(source, args.out, results=args.results, model_name=args.model, name=args.name,
                            license_id=args.license, repo_id=args.repo_id, sha256=args.sha256,
                            timing=not args.no_timing, threads=args.threads)
    meta = card.meta
    print(f"wrote {card.out}: README.md, model.safetensors (sha256 {card.sha256}), meta.json")
    print(f"model {card.name}: {meta.get('role')} {meta.get('preset')}, {card.params:,} parameters, "
          f"{meta['descriptor_dim']}-d descriptors, input {meta['image_size'][0]}×{meta['image_size'][1]}")
    if card.result is not None:
        dataset = card.result.dataset
        recall = ", ".join(f"R@{n} {v:.1f}" for n, v in card.result.recall.items() if n in ("1", "5", "10"))
        print(f"results: {card.result.entry['name']} (matched by {card.result.how}) on {dataset.get('name')}/"
              f"{dataset.get('split')}, radius {dataset.get('radius')} {dataset.get('unit')}: {recall}")
    for timing in card.timings:
        print(f"batch {timing['batch']}: {timing['ms_per_image']:.2f} ms per image")
    return 0
