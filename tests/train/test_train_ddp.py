"""Two-process DistributedDataParallel training on CPU (gloo, torchrun) equals one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tscm.config import load_config
from tscm.data.synthetic.city import ensure_synthetic_city
from tscm.models import build_model
from tscm.train.runs import distill

# The no-distillation student run: no dropout, and frozen batch norms, because per-process batch
# statistics cannot equal whole-batch ones (SyncBatchNorm needs a GPU).
SETTINGS = [
    "model.preset=student-tiny",
    "loss.preset=none",
    "mining.descriptors=student",
    "train.batchnorm=frozen",
    "train.max_queries_per_epoch=8",
    "train.batch_size=4",
    "train.epochs=2",
    "train.patience=0",
    "train.lr=1e-3",
    "train.progress=false",
    "mining.num_negatives=2",
    "mining.num_random=16",
    "mining.positive_rule=heading",
    "run.tensorboard=false",
]


def steps_csv(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "steps.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    city = ensure_synthetic_city("tiny", seed=0, cache_dir=tmp_path / "city", progress=False)
    common = [f"data.path={city}", f"run.output_dir={tmp_path / 'runs'}", *SETTINGS]
    single = distill(load_config("demo_student", [*common, "run.name=single", "train.threads=1"]))

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tscm", "distill"]
    for item in [*common, "run.name=ddp", "train.threads=1"]:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    ddp_dir = tmp_path / "runs" / "ddp"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "single"]
    single_rows = steps_csv(single.run_dir)
    ddp_rows = steps_csv(ddp_dir)
    assert len(single_rows) == len(ddp_rows) >= 3  # same number of steps
    for a, b in zip(single_rows, ddp_rows):  # the logged loss is the whole global batch's
        assert float(a["total"]) == pytest.approx(float(b["total"]), rel=1e-4)
    one, two = load_file(str(single.last_checkpoint / "model.safetensors")), load_file(str(ddp_dir / "last" / "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-5), (name, (one[name] - two[name]).abs().max())
    # training moved the weights away from their seeded start, so the comparison means something
    torch.manual_seed(1234)
    start = build_model("student-tiny").state_dict()
    assert any(not torch.allclose(start[name], one[name], atol=1e-4) for name in one)
