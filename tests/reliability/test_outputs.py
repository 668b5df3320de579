"""Outputs that are inputs, half-done failures, and what a command reads said in its output.

Every output path is checked before any work: an output that is one of the command's inputs (the
same path, a symbolic link to it or a hard link of it), a folder, a FIFO, a path through a file,
or the same file named twice is refused in one line and every earlier file stays as it was. A
command that writes several files writes all of them or none; `index calibrate --measure` measures
before it writes. Data-set files give every split unless one is named, and the output says which;
frame-numbered maps print frames; a folder's files of other types are counted; a name with a line
break never misaligns a names file.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from reliability.support import (Snapshot, assert_no_traceback, assert_refused, image_set, make_fifo, previous_output,
                                 tscm, write_image, write_manifest)


@pytest.fixture
def data(tmp_path):
    """A metric CSV set of real images (4 database, 2 queries) and a private student checkpoint folder."""
    manifest, db, queries = image_set(tmp_path / "set")
    return manifest, db, queries


def alias(kind: str, target, folder):
    """A second name for `target`: the path itself, a symbolic link or a hard link."""
    if kind == "same":
        return target
    folder.mkdir(exist_ok=True)
    other = folder / f"{kind}-{target.name}.out"
    if kind == "symlink":
        other.symlink_to(target)
    else:
        os.link(target, other)
    return other


# (id, command words: {csv} {db1} {ck} {out} placeholders, the input the output aliases)
CASES = [
    ("evaluate --json the manifest", ["evaluate", "{csv}", "--checkpoint", "{ck}", "--json", "{out}"], "csv"),
    ("evaluate --save-descriptors an image", ["evaluate", "{csv}", "--checkpoint", "{ck}", "--save-descriptors", "{out}"], "db1"),
    ("evaluate --json meta.json", ["evaluate", "{csv}", "--checkpoint", "{ck}", "--json", "{out}"], "meta"),
    ("evaluate --json the descriptors", ["evaluate", "{csv}", "--descriptors", "{npz}", "--json", "{out}"], "npz"),
    ("index build --out an image", ["index", "build", "--checkpoint", "{ck}", "--images", "{csv}", "--out", "{out}"], "db1"),
    ("index build --out the manifest", ["index", "build", "--checkpoint", "{ck}", "--images", "{csv}", "--out", "{out}"], "csv"),
    ("index build --out the weights", ["index", "build", "--checkpoint", "{ck}", "--images", "{csv}", "--out", "{out}"], "weights"),
    ("export-descriptors --out the manifest",
     ["export-descriptors", "--checkpoint", "{ck}", "--images", "{csv}", "--out", "{out}"], "csv"),
    ("export-descriptors --pairs an image",
     ["export-descriptors", "--checkpoint", "{ck}", "--images", "{csv}", "--out", "{tmp}/x.h5", "--pairs", "{out}"], "db1"),
    ("export --onnx the weights",
     ["export", "{ck}", "--onnx", "{out}", "--exporter", "torchscript", "--no-parity-check"], "weights"),
]
ALIASES = ["same", "symlink", "hardlink"]


@pytest.mark.parametrize("kind", ALIASES)
@pytest.mark.parametrize("case, words, target", CASES, ids=[c[0] for c in CASES])
def test_an_output_that_is_an_input_is_refused_before_work(case, words, target, kind, data, student, tmp_path, capsys):
    manifest, db, queries = data
    npz = tmp_path / "d.npz"
    np.savez(npz, db=np.eye(4, 8, dtype=np.float32), queries=np.eye(2, 8, dtype=np.float32))
    inputs = {"csv": manifest, "db1": db[1], "meta": student / "meta.json", "weights": student / "model.safetensors",
              "npz": npz}
    out = alias(kind, inputs[target], tmp_path / "aliases")
    before = Snapshot(manifest.parent, student, npz)
    argv = [w.format(csv=manifest, ck=student, out=out, npz=npz, tmp=tmp_path) for w in words]
    message = assert_refused(tscm(capsys, *argv), argv[0], str(out), "input")
    assert inputs[target].name in message
    before.assert_unchanged()
    assert not (tmp_path / "x.h5").exists()


BAD_OUTPUTS = [  # (id, the output path made in a folder with a suffix, what the message names)
    ("a folder", lambda tmp, suffix: tmp, "folder"),
    ("a FIFO", lambda tmp, suffix: make_fifo(tmp / f"pipe{suffix}"), "FIFO"),
    ("through a file", lambda tmp, suffix: tmp / "set" / "set.csv" / f"result{suffix}", "Not a directory"),
    ("a dangling link", lambda tmp, suffix: _dangling(tmp / f"link{suffix}"), "symbolic link"),
]


def _dangling(path):
    path.symlink_to(path.with_name("nowhere") / path.name)
    return path


@pytest.mark.parametrize("case, make, named", BAD_OUTPUTS, ids=[c[0] for c in BAD_OUTPUTS])
@pytest.mark.parametrize("option, suffix", [("--json", ".json"), ("--save-descriptors", ".npz")])
def test_evaluate_refuses_an_output_it_cannot_write(case, make, named, option, suffix, data, checkpoints, tmp_path,
                                                    capsys):
    manifest, _, _ = data
    out = make(tmp_path, suffix)
    before = Snapshot(manifest.parent)
    outcome = tscm(capsys, "evaluate", manifest, "--checkpoint", checkpoints["student"], option, out)
    assert_refused(outcome, "evaluate", option, named)
    before.assert_unchanged()
    assert not (tmp_path / "nowhere").exists()


def test_the_same_file_named_for_two_outputs_is_refused(data, checkpoints, tmp_path, capsys):
    manifest, _, _ = data
    out = tmp_path / "both.npz"
    outcome = tscm(capsys, "evaluate", manifest, "--checkpoint", checkpoints["student"], "--json", out,
                   "--save-descriptors", out)
    assert_refused(outcome, "evaluate", "both.npz", "same file")
    assert not out.exists()


@pytest.mark.parametrize("name", ["descriptors.bin", "descriptors", "descriptors.npy"])
def test_save_descriptors_must_be_an_npz_checked_before_work(name, data, checkpoints, tmp_path, capsys):
    manifest, _, _ = data
    assert_refused(tscm(capsys, "evaluate", manifest, "--checkpoint", checkpoints["student"], "--save-descriptors",
                        tmp_path / name), "evaluate", name, ".npz")
    assert not (tmp_path / name).exists()


def test_export_descriptors_checks_every_output_before_writing_any(data, checkpoints, tmp_path, capsys):
    """A pairs path that is a folder used to be found after the HDF5 file and arrays were written."""
    manifest, _, _ = data
    out = tmp_path / "x.h5"
    outcome = tscm(capsys, "export-descriptors", "--checkpoint", checkpoints["student"], "--images", manifest,
                   "--out", out, "--pairs", tmp_path)
    assert_refused(outcome, "export-descriptors", "--pairs", "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_export_descriptors_writes_all_files_or_none(data, checkpoints, tmp_path, capsys, monkeypatch):
    """A failure while writing the fourth file (here: the pairs file) keeps the three written before it."""
    from tscm.deploy.retrieval import descriptor_export as exports

    manifest, _, _ = data
    out = tmp_path / "out" / "x.h5"
    assert tscm(capsys, "export-descriptors", "--checkpoint", checkpoints["student"], "--images", manifest,
                "--out", out, "--pairs", tmp_path / "out" / "pairs.txt", "-k", 1).code == 0
    before = Snapshot(tmp_path / "out")
    real_write = exports.write_text_atomic

    def fail_on_pairs(path, text):
        if str(path).endswith("pairs.txt"):
            raise OSError(28, "No space left on device", str(path))
        real_write(path, text)

    monkeypatch.setattr(exports, "write_text_atomic", fail_on_pairs)
    outcome = tscm(capsys, "export-descriptors", "--checkpoint", checkpoints["student_other"], "--images", manifest,
                   "--out", out, "--pairs", tmp_path / "out" / "pairs.txt", "-k", 2)
    assert_refused(outcome, "export-descriptors", "pairs.txt", "No space left")
    before.assert_unchanged()


def test_calibrate_measures_before_it_writes_the_index(index_file, small, tmp_path, capsys):
    """--measure of a split the data lacks used to fail after the new threshold was stored."""
    index = tmp_path / "map.idx"
    shutil.copy(index_file, index)
    before = Snapshot(index)
    outcome = tscm(capsys, "index", "calibrate", "--index", index, "--data", small.parent.parent, "--split", "val",
                   "--target-precision", 50, "--measure", "nosuch")
    assert_refused(outcome, "index", "nosuch")
    before.assert_unchanged()
    query = small.parent.parent / "query" / "q" / "000000_pitch1_yaw1.jpg"
    assert "no acceptance threshold" in tscm(capsys, "query", "--index", index, query).err


CALIBRATE_JSON_TARGETS = [  # (id, the file --json names, relative to the checkpoint or data folder; extra words)
    ("the recorded checkpoint's meta.json", "ck", "meta.json", []),
    ("the --checkpoint's weights", "ck", "model.safetensors", ["--checkpoint", "{ck}"]),
    ("a validation database image", "data", "database/000/000000_pitch1_yaw1.jpg", []),
    ("a query image of the --measure split", "data", "query/q/000001_pitch1_yaw3.jpg", ["--measure", "test"]),
]


@pytest.mark.parametrize("kind", ["same", "symlink"])
@pytest.mark.parametrize("case, base, relative, extra", CALIBRATE_JSON_TARGETS, ids=[c[0] for c in CALIBRATE_JSON_TARGETS])
def test_calibrate_refuses_a_json_that_is_the_model_or_an_image(case, base, relative, extra, kind, student, small,
                                                                tmp_path, capsys):
    """The model the index records and the images of every split read were once overwritten with rc 0."""
    root = small.parent.parent
    index = tmp_path / "map.idx"
    assert tscm(capsys, "index", "build", "--checkpoint", student, "--images", small, "--out", index).code == 0
    target = {"ck": student, "data": root}[base] / relative
    out = alias(kind, target, tmp_path / "aliases")
    before = Snapshot(root, student, index)
    argv = ["index", "calibrate", "--index", index, "--data", root, "--bound", "none", "--target-precision", 50,
            "--json", out, *(w.format(ck=student) for w in extra)]
    assert_refused(tscm(capsys, *argv), "index", str(out), "input", target.name)
    before.assert_unchanged()


# ----- what is read, said --------------------------------------------------------------------------


@pytest.fixture
def split_csv(tmp_path):
    """Two database rows in split train, two in test, two test queries."""
    for i in range(4):
        write_image(tmp_path / f"d{i}.jpg", seed=i)
    for i in range(2):
        write_image(tmp_path / f"q{i}.jpg", seed=10 + i)
    rows = [(f"d{i}.jpg", 500000 + 10 * i, 4000000, "database", "train" if i < 2 else "test") for i in range(4)]
    rows += [(f"q{i}.jpg", 500000 + 10 * i, 4000000, "query", "test") for i in range(2)]
    rows += [(f"q{i}.jpg", 500000 + 10 * i, 4000000, "query", "train") for i in range(2)]
    return write_manifest(tmp_path / "split.csv", rows, header="path,east,north,role,split")


@pytest.mark.parametrize("split, count, named", [(None, 4, "train+test"), ("test", 2, "test"), ("train", 2, "train")])
def test_index_build_reads_every_split_unless_told_and_says_which(split, count, named, split_csv, checkpoints, capsys):
    out = split_csv.parent / "map.idx"
    extra = [] if split is None else ["--split", split]
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", split_csv, "--out", out,
                   *extra)
    assert_no_traceback(outcome)
    assert outcome.code == 0, outcome.err
    assert f"{count} database images of {split_csv} (split {named})" in outcome.out
    from tscm.deploy.retrieval.index import PlaceIndex

    assert PlaceIndex.load(out).count == count


@pytest.mark.parametrize("split, count", [(None, 4), ("test", 2)])
def test_export_descriptors_reads_every_split_unless_told(split, count, split_csv, checkpoints, tmp_path, capsys):
    out = tmp_path / "out" / "x.h5"
    extra = [] if split is None else ["--split", split]
    outcome = tscm(capsys, "export-descriptors", "--checkpoint", checkpoints["student"], "--images", split_csv,
                   "--out", out, *extra)
    assert outcome.code == 0, outcome.err
    assert f"(split {'train+test' if split is None else split})" in outcome.err
    assert len(np.load(out.with_name("x.database.npy"))) == count


def test_a_split_the_file_lacks_and_a_split_for_a_folder_are_refused(split_csv, checkpoints, capsys):
    out = split_csv.parent / "map.idx"
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", split_csv, "--out", out,
                   "--split", "val")
    assert_refused(outcome, "index", "split.csv", "'val'", "train, test")
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", split_csv.parent,
                   "--out", out, "--split", "test")
    assert_refused(outcome, "index", "--split", "folder")
    assert not out.exists()


def test_a_frame_numbered_map_prints_frames(tmp_path, checkpoints, capsys):
    for i in range(3):
        write_image(tmp_path / f"db{i}.jpg", seed=i)
        write_image(tmp_path / f"q{i}.jpg", seed=10 + i)
    manifest = write_manifest(tmp_path / "frames.csv", [(f"db{i}.jpg", 7 + i, "database") for i in range(3)]
                              + [(f"q{i}.jpg", 7 + i, "query") for i in range(3)], header="path,frame,role")
    out = tmp_path / "map.idx"
    built = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", manifest, "--out", out)
    assert built.code == 0 and "coordinates: frame numbers" in built.out, built.out
    printed = tscm(capsys, "query", "--index", out, tmp_path / "q0.jpg", "-k", 3)
    assert printed.code == 0, printed.err
    places = [line for line in printed.out.splitlines() if line.strip()[:2].strip().rstrip(".").isdigit()]
    assert len(places) == 3 and all("frame " in line and "east" not in line and "north" not in line for line in places)
    assert sorted(int(line.split("frame ")[1].split()[0]) for line in places) == [7, 8, 9]
    import json

    as_json = json.loads(tscm(capsys, "query", "--index", out, tmp_path / "q0.jpg", "-k", 3, "--json").out)
    assert sorted(p["frame"] for p in as_json["queries"][0]["places"]) == [7, 8, 9]
    assert all("east" not in p for p in as_json["queries"][0]["places"])


@pytest.mark.parametrize("command", ["index", "export-descriptors"])
def test_a_folders_files_of_other_types_are_counted(command, tmp_path, checkpoints, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    for i in range(3):
        write_image(folder / f"{i}.jpg", seed=i)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "a.webp")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "b.gif")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "c.gif")
    if command == "index":
        outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", folder,
                       "--out", tmp_path / "map.idx")
        said = outcome.out
    else:
        outcome = tscm(capsys, "export-descriptors", "--checkpoint", checkpoints["student"], "--images", folder,
                       "--out", tmp_path / "x.h5")
        said = outcome.err
    assert outcome.code == 0, outcome.err
    assert "3 images in" in said and "left out 3 file(s) of other types (2 .gif, 1 .webp)" in said, said


def _entry_that_is_not_a_file(folder, kind):
    """An entry named like an image that no command may open as one: (path, the words that count it)."""
    path = folder / f"z-{kind}.jpg"
    if kind == "fifo":
        make_fifo(path)
        return "1 named pipe (FIFO)"
    if kind == "dangling-link":
        path.symlink_to(folder / "nowhere.jpg")
    else:  # a symbolic link loop
        path.symlink_to(folder / "z-loop-2.jpg")
        (folder / "z-loop-2.jpg").symlink_to(path)
        return "2 link that leads nowhere"
    return "1 link that leads nowhere"


@pytest.mark.parametrize("kind", ["fifo", "dangling-link", "loop"])
@pytest.mark.parametrize("command", ["index", "export-descriptors"])
def test_a_folders_entries_that_are_not_files_are_counted(command, kind, tmp_path, checkpoints, capsys):
    """A FIFO or a broken link named .jpg in a folder was left out without a word."""
    folder = tmp_path / "photos"
    for i in range(2):
        write_image(folder / f"{i}.jpg", seed=i)
    counted = _entry_that_is_not_a_file(folder, kind)
    if command == "index":
        outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", folder,
                       "--out", tmp_path / "map.idx")
        said = outcome.out
    else:
        outcome = tscm(capsys, "export-descriptors", "--checkpoint", checkpoints["student"], "--images", folder,
                       "--out", tmp_path / "x.h5")
        said = outcome.err
    assert_no_traceback(outcome)
    assert outcome.code == 0, outcome.err
    assert "2 images in" in said and f"of other types ({counted})" in said, said


@pytest.mark.parametrize("kind", ["fifo", "loop"])
@pytest.mark.parametrize("command, option", [("index", "--images"), ("export-descriptors", "--images"),
                                             ("export-descriptors", "--queries")])
def test_a_data_source_that_is_a_fifo_or_a_loop_is_named(command, option, kind, data, checkpoints, tmp_path, capsys):
    """A FIFO given as the images was read as an empty folder ("no images found in the folder")."""
    manifest, _, _ = data
    source = tmp_path / "source.csv"
    if kind == "fifo":
        make_fifo(source)
    else:
        source.symlink_to(tmp_path / "other.csv")
        (tmp_path / "other.csv").symlink_to(source)
    images, queries = (source, None) if option == "--images" else (manifest, source)
    words = (["index", "build"] if command == "index" else ["export-descriptors"]) + [
        "--checkpoint", checkpoints["student"], "--images", images, "--out", tmp_path / "out.bin"]
    if queries is not None:
        words += ["--queries", queries]
    named = "named pipe (FIFO)" if kind == "fifo" else "symbolic links"
    assert_refused(tscm(capsys, *words), words[0], "source.csv", named, absent=["no images"])
    assert not (tmp_path / "out.bin").exists()


def test_a_folder_of_only_other_types_names_them(tmp_path, checkpoints, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "a.webp")
    outcome = tscm(capsys, "index", "build", "--checkpoint", checkpoints["student"], "--images", folder,
                   "--out", tmp_path / "map.idx")
    assert_refused(outcome, "index", "no images", "1 .webp")


@pytest.mark.parametrize("name", ["a\nb.jpg", "a\rb.jpg", "a\u2028b.jpg"])
def test_a_line_break_in_a_file_name_is_refused_not_misaligned(name, tmp_path, checkpoints, capsys):
    folder = tmp_path / "photos"
    for i in range(3):
        write_image(folder / f"{i}.jpg", seed=i)
    write_image(folder / name, seed=9)
    out = tmp_path / "out" / "x.h5"
    outcome = tscm(capsys, "export-descriptors", "--checkpoint", checkpoints["student"], "--images", folder, "--out", out)
    assert_refused(outcome, "export-descriptors", "line break", "rename")
    assert not out.parent.exists()


# ----- commands that write into a folder: card, import-official, bench ---------------------------------


def link(kind: str, target, path):
    """`path` made a second name for `target`: a symbolic or a hard link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target) if kind == "symlink" else os.link(target, path)
    return path


@pytest.mark.parametrize("kind", ["same", "symlink"])
def test_card_refuses_the_checkpoints_own_folder(kind, student, tmp_path, capsys):
    """The card's copies and README.md would go into the checkpoint being carded."""
    out = student if kind == "same" else link("symlink", student, tmp_path / "card")
    before = Snapshot(student)
    outcome = tscm(capsys, "card", student, "--out", out, "--no-timing")
    assert_refused(outcome, "card", f"--out {out}", "the checkpoint", "input")
    before.assert_unchanged()


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
@pytest.mark.parametrize("name", ["model.safetensors", "meta.json"])
def test_card_refuses_a_folder_whose_file_is_the_checkpoints(name, kind, student, tmp_path, capsys):
    out = tmp_path / "card"
    other = link(kind, student / name, out / name)
    before = Snapshot(student, out)
    outcome = tscm(capsys, "card", student, "--out", out, "--no-timing")
    assert_refused(outcome, "card", f"--out {other}", "the checkpoint", "input")
    before.assert_unchanged()


def test_card_refuses_to_write_its_readme_over_the_results_file(student, tmp_path, capsys):
    out = tmp_path / "card"
    results = out / "README.md"
    before = previous_output(results, b'{"format": "tscm-results"}\n')
    outcome = tscm(capsys, "card", student, "--out", out, "--results", results, "--no-timing")
    assert_refused(outcome, "card", "README.md", "--results", "input")
    before.assert_unchanged()
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]


@pytest.mark.parametrize("case, make, named", [
    ("a file", lambda tmp: previous_output(tmp / "card").paths[0], "is a file"),
    ("a FIFO", lambda tmp: make_fifo(tmp / "card"), "FIFO"),
    ("through a file", lambda tmp: previous_output(tmp / "plain").paths[0] / "card", "Not a directory"),
], ids=["a file", "a FIFO", "through a file"])
def test_card_refuses_an_out_it_cannot_write_into(case, make, named, checkpoints, tmp_path, capsys):
    out = make(tmp_path)
    before = Snapshot(*tmp_path.iterdir())
    outcome = tscm(capsys, "card", checkpoints["student"], "--out", out, "--no-timing")
    assert_refused(outcome, "card", "--out", named)
    before.assert_unchanged()


def test_card_writes_its_three_files_together_or_none(checkpoints, tmp_path, capsys, monkeypatch):
    """A full disk while writing README.md keeps the earlier card whole: not the other model's weights
    beside the first model's card."""
    from tscm.deploy.packaging import model_card

    out = tmp_path / "card"
    assert tscm(capsys, "card", checkpoints["student"], "--out", out, "--no-timing").code == 0
    before = Snapshot(out)

    def full_disk(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(model_card, "write_text_atomic", full_disk)
    outcome = tscm(capsys, "card", checkpoints["student_other"], "--out", out, "--no-timing")
    assert_refused(outcome, "card", "README.md", "No space left")
    before.assert_unchanged()


@pytest.mark.parametrize("kind", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("name", ["model.safetensors", "meta.json"])
def test_import_official_refuses_an_out_whose_file_is_the_published_checkpoint(name, kind, checkpoints, tmp_path,
                                                                               capsys):
    """`import-official out/model.safetensors --out out --overwrite` would replace the file it imports."""
    out = tmp_path / "out"
    shutil.copytree(checkpoints["student"], out)
    published = out / name if kind == "same" else tmp_path / "p.pth.tar"
    published.unlink(missing_ok=True)
    torch.save({"state_dict": {}}, published)
    if kind != "same":
        (out / name).unlink()
        link(kind, published, out / name)
    before = Snapshot(out, published)
    outcome = tscm(capsys, "import-official", published, "--role", "student", "--out", out, "--overwrite")
    assert_refused(outcome, "import-official", f"--out {out / name}", "the published checkpoint", "input")
    before.assert_unchanged()


def test_import_official_refuses_an_out_that_is_a_fifo(tmp_path, capsys):
    published = tmp_path / "p.pth.tar"
    torch.save({"state_dict": {}}, published)
    out = make_fifo(tmp_path / "out")
    outcome = tscm(capsys, "import-official", published, "--role", "student", "--out", out)
    assert_refused(outcome, "import-official", "--out", "FIFO")


@pytest.mark.parametrize("case, make, named", [
    ("a file", lambda tmp, ck: previous_output(tmp / "bench").paths[0], "is a file"),
    ("the --checkpoint folder", lambda tmp, ck: ck, "the --checkpoint input"),
    ("bench.json a link to the checkpoint's weights",
     lambda tmp, ck: link("symlink", ck / "model.safetensors", tmp / "bench" / "bench.json").parent, "the --checkpoint input"),
], ids=["a file", "the --checkpoint folder", "bench.json a link to the weights"])
def test_bench_checks_its_out_folder_before_work(case, make, named, student, tmp_path, capsys, stop_before_work):
    """bench writes bench.json and bench.md after the whole run: a bad --out used to fail only then."""
    out = make(tmp_path, student)
    before = Snapshot(student, *tmp_path.iterdir())
    outcome = tscm(capsys, "bench", "matching", "--quick", "--no-gpu", "--checkpoint", student, "--out", out)
    assert_refused(outcome, "bench", "--out", named)
    before.assert_unchanged()
