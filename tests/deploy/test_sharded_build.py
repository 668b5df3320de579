"""tscm index build under torchrun: two CPU processes (gloo) write the same index file as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tscm.deploy.retrieval.index import PlaceIndex, read_index_metadata
from tscm.deploy.retrieval.map_builder import batch_shard, build_map

from helpers.model_files import write_checkpoint


def write_places(folder: Path, count: int) -> list[Path]:
    """`count` images with @east@north@ names (coordinates), plus one unreadable file among them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    paths = []
    for i in range(count):
        path = folder / f"@{500000 + 7.5 * i:.1f}@{4400000 - 3.0 * i:.1f}@{i:03d}@.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path, quality=92)
        paths.append(path)
    (folder / "@500010.0@4400000.0@broken@.jpg").write_bytes(b"not a jpeg")
    return paths


def torchrun(*arguments: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "tscm", *arguments]
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)


def test_batch_shards_cover_the_images_in_whole_batches() -> None:
    for count, batch, world in ((21, 4, 2), (5, 16, 3), (100, 7, 4), (0, 4, 2)):
        shares = [batch_shard(count, batch, rank, world) for rank in range(world)]
        assert [i for share in shares for i in share] == list(range(count))
        assert all(share.start % batch == 0 for share in shares if len(share))


@pytest.mark.slow
def test_two_processes_write_the_single_process_index(tmp_path) -> None:
    checkpoint = write_checkpoint(tmp_path / "student", "student-tiny", seed=0)
    images = tmp_path / "places"
    write_places(images, 21)  # 22 files, batches of 4: ranks describe 12 and 10 of them
    single = tmp_path / "single.index"
    build_map(checkpoint, images, single, batch_size=4, threads=1, on_bad_image="skip", report=lambda line: None)

    sharded = tmp_path / "out" / "sharded.index"
    done = torchrun("index", "build", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(sharded),
                    "--batch-size", "4", "--threads", "1", "--on-bad-image", "skip")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1 and "sharded over 2 processes" in done.stdout  # rank 0 alone reports
    assert "over 2 processes" in done.stdout and "skipped 1 unreadable image(s)" in done.stdout
    assert sorted(p.name for p in sharded.parent.iterdir()) == ["sharded.index"]  # one file, no temporaries

    one, two = PlaceIndex.load(single), PlaceIndex.load(sharded)
    assert one.count == two.count == 21
    np.testing.assert_array_equal(one.ids, two.ids)
    assert 2 not in one.ids.tolist() and int(one.ids.max()) == 21  # the broken file (position 2) leaves a gap
    assert [one.entry(i)["path"] for i in range(21)] == [two.entry(i)["path"] for i in range(21)]
    assert [one.entry(i)["xy"] for i in range(21)] == [two.entry(i)["xy"] for i in range(21)]
    np.testing.assert_array_equal(one.vectors(), two.vectors())  # flat index: the descriptors themselves
    hits_one, hits_two = one.search(one.vectors(), 5), two.search(one.vectors(), 5)
    np.testing.assert_array_equal(hits_one.ids, hits_two.ids)
    np.testing.assert_array_equal(hits_one.distances, hits_two.distances)
    assert read_index_metadata(single) == read_index_metadata(sharded)
    assert single.read_bytes() == sharded.read_bytes()  # the very same file


@pytest.mark.slow
def test_an_error_on_one_rank_stops_every_rank(tmp_path) -> None:
    checkpoint = write_checkpoint(tmp_path / "student", "student-tiny", seed=0)
    images = tmp_path / "places"
    write_places(images, 9)  # the broken file is third: in rank 0's share
    out = tmp_path / "map.index"
    done = torchrun("index", "build", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                    "--batch-size", "4", "--threads", "1")
    assert done.returncode != 0
    assert "broken" in done.stderr and "rank 0 of 2 failed" in done.stderr
    assert not out.exists()
