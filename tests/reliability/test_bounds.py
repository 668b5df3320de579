"""Small files that expand, nest or never end, and numbers out of range: settings YAML with aliases,
repeated keys or deep nesting; deeply nested JSON; a VPR-Bench ground truth of shared references; a
FIFO, socket or symbolic link loop where an image should be; huge frames and seeds; float64
descriptors. Each is refused in one short line (exit 2) in bounded time and memory, or gives the
right answer; nothing is left behind."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket

import numpy as np
import pytest

from reliability.support import (Snapshot, assert_no_traceback, assert_problems, assert_refused, fifo_released_after,
                                 image_set, make_fifo, previous_output, training_args, tscm, tscm_bounded, write_image,
                                 write_manifest)

MESSAGE_LIMIT = 400  # characters: a refusal quotes a short excerpt of a value, never the value


def short(message: str) -> str:
    assert len(message) <= MESSAGE_LIMIT, f"a {len(message)}-character message: {message[:200]}..."
    return message


# ----- settings YAML --------------------------------------------------------------------------------


def alias_bomb() -> str:
    """Nine levels of nine aliases each: a few hundred bytes that name 9**9 strings."""
    lines = ['train: [&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"],']
    for level in range(1, 9):
        lines.append(f"  &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "],")
    lines.append("  *a8]")
    return "\n".join(lines) + "\n"


YAML_CASES = [
    ("repeated-section", "train:\n  lr: 0.1\ntrain:\n  epochs: 3\n", ["line 3", "'train'", "second time"]),
    ("repeated-field", "train:\n  lr: 0.1\n  lr: 0.2\n", ["line 3", "'lr'", "second time"]),
    ("anchor-and-alias", "train: &t\n  lr: 0.1\nmodel: *t\n", ["line 1", "anchor", "not allowed"]),
    ("alias-bomb", alias_bomb(), ["line 1", "anchor", "not allowed"]),
    ("deep-flow", "train: " + "[" * 20000 + "]" * 20000 + "\n", ["nested"]),
    ("deep-block", "train:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 120)), ["nested deeper"]),
    ("merge-key", "base: &b {lr: 0.1}\ntrain:\n  <<: *b\n", ["anchor", "not allowed"]),
]


SLOW_YAML_CASES = {"alias-bomb"}  # read by a memory-bounded child process: seconds


@pytest.mark.parametrize("case, text, named", [
    pytest.param(*case, id=case[0], marks=pytest.mark.slow if case[0] in SLOW_YAML_CASES else ()) for case in YAML_CASES
])
def test_a_settings_file_that_expands_repeats_or_nests_is_refused(case, text, named, tmp_path, capsys):
    config = tmp_path / "settings.yaml"
    config.write_text(text, encoding="utf-8")
    runs = tmp_path / "runs"
    argv = ["train-teacher", "--config", config, "--set", f"run.output_dir={runs}"]
    outcome = tscm_bounded(*argv) if case == "alias-bomb" else tscm(capsys, *argv)
    short(assert_refused(outcome, "train-teacher", "settings.yaml", *named))
    assert not runs.exists()


def test_a_repeated_key_in_a_run_folders_config_is_refused_on_resume(trained_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_runs["teacher"], run)
    config = run / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8") + "train:\n  epochs: 9\n", encoding="utf-8")
    before = Snapshot(run / "last", run / "best")
    outcome = tscm(capsys, "train-teacher", "--resume", run)
    short(assert_refused(outcome, "train-teacher", "config.yaml", "'train'", "second time"))
    before.assert_unchanged()


def test_a_settings_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    config = make_fifo(tmp_path / "settings.yaml")
    with fifo_released_after(config):
        outcome = tscm(capsys, "train-teacher", "--config", config, "--set", f"run.output_dir={tmp_path / 'runs'}")
    assert_refused(outcome, "train-teacher", "settings.yaml", "FIFO")


def test_a_huge_settings_file_is_not_read(tmp_path, capsys):
    config = tmp_path / "settings.yaml"
    config.write_text("train:\n  lr: 0.1\n" + "# padding\n" * 200_000, encoding="utf-8")
    assert_refused(tscm(capsys, "train-teacher", "--config", config, "--set", f"run.output_dir={tmp_path / 'runs'}"),
                   "train-teacher", "settings.yaml", "larger than")


def test_a_plain_settings_file_still_works(tmp_path):
    """The strict loader reads what tscm writes and ships: every preset, and a run's resolved config."""
    from tscm.config import load_config
    from tscm.config.loading import shipped_presets
    from tscm.config.yaml_text import load_yaml

    for preset in shipped_presets():
        config = load_config(preset)
        assert load_yaml(config.to_yaml(), "resolved") == config.to_dict()


# ----- JSON a command reads -------------------------------------------------------------------------

DEEP_JSON = "[" * 100_000 + "]" * 100_000
JSON_CASES = [
    ("deep-array", lambda meta: '{"format": "tscm-checkpoint", "extra": ' + DEEP_JSON + "}", ["meta.json", "nested"]),
    ("deep-object", lambda meta: '{"a": ' * 70 + "1" + "}" * 70, ["meta.json", "nested deeper"]),
    ("integer-of-5000-digits", lambda meta: '{"format_version": ' + "9" * 5000 + "}", ["meta.json", "not valid JSON"]),
    ("not-utf8", lambda meta: b'{"preset": "\xff"}', ["meta.json", "UTF-8"]),
    # json keeps the last of a repeated key without a word, as YAML once did
    ("repeated-key", lambda meta: json.dumps(meta)[:-1] + ', "descriptor_dim": 7}', ["meta.json", "'descriptor_dim'",
                                                                                    "twice"]),
]


@pytest.mark.parametrize("case, content, named", JSON_CASES, ids=[c[0] for c in JSON_CASES])
@pytest.mark.parametrize("command", ["info", "evaluate"])
def test_a_meta_json_that_nests_or_overflows_is_refused(case, content, named, command, student, small, capsys):
    meta = student / "meta.json"
    text = content(json.loads(meta.read_text(encoding="utf-8")))
    meta.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    argv = ["info", student] if command == "info" else ["evaluate", small, "--checkpoint", student]
    short(assert_refused(tscm(capsys, *argv), command, *named))


def test_a_results_json_nested_too_deeply_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(DEEP_JSON, encoding="utf-8")
    short(assert_refused(tscm(capsys, "visualize", run), "visualize", "results.json", "nested"))


@pytest.mark.parametrize("header", ["deep", "huge-int", "repeated-key"])
def test_an_index_header_that_nests_or_overflows_is_refused(header, index_file, small, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    index = tmp_path / "map.idx"
    with safe_open(str(index_file), framework="np") as handle:
        real = handle.metadata()["tscm_index"]
    text = {"deep": DEEP_JSON, "huge-int": '{"format": "tscm-place-index", "count": ' + "9" * 5000 + "}",
            "repeated-key": real[:-1] + ', "count": 1}'}[header]
    save_file(load_file(str(index_file)), str(index), metadata={"tscm_index": text})
    image = small.parent.parent / "query" / "q" / "000000_pitch1_yaw1.jpg"
    message = short(assert_refused(tscm(capsys, "query", "--index", index, image), "query", "map.idx", "index metadata"))
    assert {"deep": "nested", "huge-int": "not valid JSON", "repeated-key": "'count' appears twice"}[header] in message


def test_a_results_json_with_a_repeated_key_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"format": "tscm-results", "format_version": 2, "models": [], "models": []}',
                                      encoding="utf-8")
    short(assert_refused(tscm(capsys, "visualize", run), "visualize", "results.json", "'models'", "twice"))


# ----- VPR-Bench ground truth -----------------------------------------------------------------------


def vpr_bench(root, payload: bytes | None = None, rows=None):
    for i in range(2):
        write_image(root / "ref" / f"{i}.jpg", seed=i)
        write_image(root / "query" / f"{i}.jpg", seed=10 + i)
    if rows is not None:
        np.save(root / "ground_truth_new.npy", rows, allow_pickle=True)
    else:
        header = np.lib.format.header_data_from_array_1_0(np.empty((2, 2), dtype=object))
        with open(root / "ground_truth_new.npy", "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            handle.write(payload)
    return root


def shared_reference_rows() -> np.ndarray:
    """Row 0 lists a list holding itself twice, 40 levels down: a few hundred bytes, 2**40 leaves."""
    inner: list = [0]
    for _ in range(40):
        inner = [inner, inner]
    rows = np.empty((2, 2), dtype=object)
    rows[0] = [0, inner]
    rows[1] = [1, [1]]
    return rows


def deep_pickle(depth: int = 200_000) -> bytes:
    """An object array whose row 0 lists a list nested `depth` deep, written opcode by opcode (pickle.dumps
    itself would recurse)."""
    array = pickle.dumps(np.empty((2, 2), dtype=object), protocol=3)  # as np.save writes it
    # Replace the array's state list (4 × None) by [0, deep, 1, [1]].
    none_list = b"]q\x07(NNNNe"
    marker = array.find(b"(NNNNe")
    assert marker > 0, "numpy's pickle layout changed"
    start = array.rfind(b"]", 0, marker)
    deep = b"]" + b"(]" * depth + b"e" * depth  # EMPTY_LIST, then MARK EMPTY_LIST ... APPENDS
    return array[:start] + b"](K\x00" + deep + b"K\x01]K\x01ae" + array[marker + len(b"(NNNNe"):]


@pytest.mark.slow
def test_a_ground_truth_of_shared_references_is_refused_in_bounded_memory(tmp_path):
    root = vpr_bench(tmp_path / "vpr", rows=shared_reference_rows())
    assert os.path.getsize(root / "ground_truth_new.npy") < 2000
    outcome = tscm_bounded("check-data", root)
    short(assert_refused(outcome, "check-data", "ground_truth_new.npy", "row 0", "ref index"))


def rows_sharing_one_list(num_rows: int, length: int) -> np.ndarray:
    """Every row [i, L] names the same list L of `length` zeros: the pickle holds L once, the rows list
    num_rows × length matches."""
    shared = [0] * length
    rows = np.empty((num_rows, 2), dtype=object)
    for i in range(num_rows):
        rows[i] = [i, shared]
    return rows


@pytest.mark.parametrize("num_rows, length", [(1200, 10_000), (3000, 1_000_000)], ids=["12-million", "3-billion"])
def test_a_ground_truth_whose_rows_share_one_list_is_refused_by_its_count(num_rows, length, tmp_path, capsys):
    """Matches are counted before any is read: a small file that repeats one list in every row (12 million
    matches once took seconds and a gigabyte in all, 3 billion would never end) is refused at once."""
    root = tmp_path / "vpr"
    write_image(root / "ref" / "0.jpg")
    (root / "query").mkdir()
    for i in range(num_rows):  # the reader only lists the queries; the refusal comes before any is opened
        (root / "query" / f"{i:05d}.jpg").touch()
    np.save(root / "ground_truth_new.npy", rows_sharing_one_list(num_rows, length), allow_pickle=True)
    assert os.path.getsize(root / "ground_truth_new.npy") < 4 * length + 20 * num_rows
    message = short(assert_refused(tscm(capsys, "check-data", root), "check-data", "ground_truth_new.npy",
                                   "more than 10000000 matches"))
    assert "repeat" in message


def test_a_ground_truth_nested_200000_deep_is_refused(tmp_path, capsys):
    root = vpr_bench(tmp_path / "vpr", payload=deep_pickle())
    short(assert_refused(tscm(capsys, "check-data", root), "check-data", "ground_truth_new.npy"))


# ----- what is not a regular image file -------------------------------------------------------------


def unix_socket(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    return server


@pytest.mark.parametrize("kind", ["fifo", "socket", "symlink-loop", "through-a-file", "dangling-link"])
@pytest.mark.parametrize("command", ["evaluate", "check-data"])
def test_an_image_that_is_not_a_regular_file(kind, command, tmp_path, capsys, checkpoints):
    manifest, db, _ = image_set(tmp_path / "set")
    target, server = db[1], None
    if kind == "fifo":
        make_fifo(target)
    elif kind == "socket":
        target.unlink()
        server = unix_socket(target)
    elif kind == "symlink-loop":
        target.unlink()
        target.symlink_to(target.with_name("other.jpg"))
        target.with_name("other.jpg").symlink_to(target.name)
    elif kind == "dangling-link":
        target.unlink()
        target.symlink_to("nowhere.jpg")
    else:  # the manifest names db/001.jpg/inner.jpg, through a file
        text = manifest.read_text(encoding="utf-8").replace("db/001.jpg", "db/001.jpg/inner.jpg")
        manifest.write_text(text, encoding="utf-8")
        target = target / "inner.jpg"
    reason = {"fifo": "FIFO", "socket": "socket", "symlink-loop": "symbolic links", "through-a-file": "Not a directory",
              "dangling-link": "missing" if command == "check-data" else "not found"}[kind]
    try:
        with fifo_released_after(db[1]):
            if command == "evaluate":
                outcome = tscm(capsys, "evaluate", manifest, "--checkpoint", checkpoints["student"])
                short(assert_refused(outcome, "evaluate", str(target), reason))
            else:
                outcome = tscm(capsys, "check-data", manifest, "--workers", 1)
                assert_problems(outcome, str(target))
                listed = [line for line in outcome.out.splitlines() if str(target) in line]
                assert any(reason in line for line in listed) or (reason == "missing" and "missing images: 1" in outcome.out), \
                    outcome.out
    finally:
        if server is not None:
            server.close()


@pytest.mark.parametrize("what", ["data set", "descriptors"])
def test_a_data_set_or_descriptor_file_that_is_a_fifo_is_refused(what, tmp_path, small, capsys):
    fifo = make_fifo(tmp_path / ("set.csv" if what == "data set" else "d.npz"))
    with fifo_released_after(fifo):
        if what == "data set":
            outcome = tscm(capsys, "check-data", fifo)
            command = "check-data"
        else:
            outcome = tscm(capsys, "evaluate", small, "--descriptors", fifo)
            command = "evaluate"
    assert_refused(outcome, command, str(fifo), "FIFO")


def test_a_symlink_loop_shared_by_database_and_queries_is_reported(tmp_path, capsys):
    """check-data resolves paths to find images shared by both sets: a loop is listed, not a RuntimeError."""
    manifest, db, queries = image_set(tmp_path / "set")
    db[0].unlink()
    db[0].symlink_to(db[0].name)
    outcome = tscm(capsys, "check-data", manifest, "--workers", 1)
    assert_problems(outcome, str(db[0]))


@pytest.mark.parametrize("command", ["check-data", "index"])
def test_a_data_argument_that_is_a_symlink_loop(command, tmp_path, capsys, checkpoints):
    loop = tmp_path / "data"
    loop.symlink_to("data")
    argv = ["check-data", loop] if command == "check-data" else ["index", "build", "--checkpoint", checkpoints["student"],
                                                              "--images", loop, "--out", tmp_path / "map.idx"]
    assert_refused(tscm(capsys, *argv), command, str(loop))
    assert not (tmp_path / "map.idx").exists()


@pytest.mark.parametrize("option", ["--checkpoint", "--config"])
def test_a_checkpoint_or_config_that_is_a_symlink_loop(option, tmp_path, capsys, checkpoints):
    loop = tmp_path / ("model" if option == "--checkpoint" else "settings.yaml")
    loop.symlink_to(loop.name)
    if option == "--checkpoint":
        images = write_image(tmp_path / "images" / "a.png").parent
        argv = ["index", "build", "--checkpoint", loop, "--images", images, "--out", tmp_path / "map.idx"]
        command = "index"
    else:
        argv = ["train-teacher", "--config", loop, "--set", f"run.output_dir={tmp_path / 'runs'}"]
        command = "train-teacher"
    assert_refused(tscm(capsys, *argv), command, str(loop))
    assert not (tmp_path / "map.idx").exists() and not (tmp_path / "runs").exists()


def _not_regular(path, kind):
    """Replace the file at `path` (if any) by a FIFO or a symbolic link loop."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        make_fifo(path)
    else:
        path.symlink_to(path.with_name("loop-other"))
        path.with_name("loop-other").symlink_to(path.name)
    return path


# (id, the command words with {ck} {idx} {run} {csv} {root} placeholders, which file becomes a FIFO or loop)
NOT_REGULAR_INPUTS = [
    ("query --index", ["query", "--index", "{idx}", "{image}"], "idx"),
    ("index calibrate --index", ["index", "calibrate", "--index", "{idx}", "--data", "{root}"], "idx"),
    ("evaluate, the checkpoint's meta.json", ["evaluate", "{csv}", "--checkpoint", "{ck}"], "meta"),
    ("evaluate, the checkpoint's weights", ["evaluate", "{csv}", "--checkpoint", "{ck}"], "weights"),
    ("export, the checkpoint's weights", ["export", "{ck}", "--onnx", "{tmp}/m.onnx"], "weights"),
    ("visualize, results.json", ["visualize", "{run}"], "results"),
    ("card --results", ["card", "{ck}", "--out", "{tmp}/card", "--results", "{run}/results.json"], "results"),
]


@pytest.mark.parametrize("kind, named", [("fifo", "named pipe (FIFO)"), ("loop", "Too many levels of symbolic links")])
@pytest.mark.parametrize("case, words, target", NOT_REGULAR_INPUTS, ids=[c[0] for c in NOT_REGULAR_INPUTS])
def test_an_input_file_that_is_a_fifo_or_a_loop_is_named_as_such(case, words, target, kind, named, student, small,
                                                                  index_file, tmp_path, capsys):
    """They were called missing ("no such index file", "not a tscm checkpoint directory (no meta.json)"),
    which sends a user looking for a file that is there."""
    manifest, _, _ = image_set(tmp_path / "set")
    index = tmp_path / "map.idx"
    shutil.copy(index_file, index)
    run = tmp_path / "run"
    run.mkdir()
    files = {"idx": index, "meta": student / "meta.json", "weights": student / "model.safetensors",
             "results": run / "results.json"}
    bad = _not_regular(files[target], kind)
    argv = [w.format(ck=student, idx=index, run=run, csv=manifest, root=small.parent.parent, tmp=tmp_path,
                     image=manifest.parent / "q" / "000.jpg") for w in words]
    with fifo_released_after(bad):
        outcome = tscm(capsys, *argv)
    command = argv[0]
    short(assert_refused(outcome, command, str(bad), named, absent=["no such", "no meta.json", "has no"]))
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "card").exists()


# ----- numbers out of range -------------------------------------------------------------------------

FRAMES = [("1e400-digits", "1" + "0" * 400), ("2**70", str(2**70)), ("5000-digits", "9" * 5000), ("-10**12", "-" + "1" + "0" * 12)]


@pytest.mark.parametrize("case, frame", FRAMES, ids=[c[0] for c in FRAMES])
@pytest.mark.parametrize("command", ["check-data", "index"])
def test_a_frame_number_out_of_range_is_refused(case, frame, command, tmp_path, capsys, checkpoints):
    for name in ("d0", "d1", "q0", "q1"):
        write_image(tmp_path / f"{name}.jpg", seed=len(name))
    manifest = write_manifest(tmp_path / "frames.csv", [("d0.jpg", frame, "database"), ("d1.jpg", 1, "database"),
                                                        ("q0.jpg", 0, "query"), ("q1.jpg", 1, "query")],
                              header="path,frame,role")
    before = previous_output(tmp_path / "map.idx")
    argv = ["check-data", manifest] if command == "check-data" else ["index", "build", "--checkpoint", checkpoints["student"],
                                                                   "--images", manifest, "--out", tmp_path / "map.idx"]
    short(assert_refused(tscm(capsys, *argv), command, "frames.csv line 2", "'frame'", "out of range"))
    before.assert_unchanged()


SEEDS = [("-1", ["-1", "0.."]), (str(2**32), [str(2**32)]), (str(10**30), ["0..4294967295"])]


@pytest.mark.parametrize("command", ["demo", "ablation"])
@pytest.mark.parametrize("seed, named", SEEDS, ids=[s[0] for s in SEEDS])
def test_a_seed_out_of_range_is_refused_before_the_run_folder_exists(seed, named, command, small_root, tmp_path, capsys,
                                                                      stop_before_work):
    out = tmp_path / "run"
    outcome = tscm(capsys, command, "--data", small_root, "--out", out, "--quick", "--seeds", "0", seed)
    short(assert_refused(outcome, command, "--seeds", *named))
    assert not out.exists(), "a refused run left its folder behind (the retry would be refused)"


@pytest.mark.parametrize("seed", ["-1", str(2**32), "9" * 5000])
def test_a_training_seed_out_of_range_is_refused(seed, city, tmp_path, capsys):
    outcome = tscm(capsys, *training_args("train-teacher", city, tmp_path, "run", f"train.seed={seed}"))
    short(assert_refused(outcome, "train-teacher", "train.seed"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**40)])
def test_synth_refuses_a_seed_out_of_range(seed, tmp_path, capsys):
    assert_refused(tscm(capsys, "synth", tmp_path / "city", "--preset", "tiny", "--seed", seed), "synth", "--seed", seed)
    assert not (tmp_path / "city").exists()


def test_float64_descriptors_keep_their_differences(small, tmp_path, capsys):
    """Descriptors around 1e8 whose differences float32 cannot hold: the right recall, not a coin toss."""
    rng = np.random.default_rng(0)
    db = 1e8 + rng.standard_normal((4, 8))
    queries = db[[3, 2, 1]] + 1e-3  # query i is nearest to database row 3 - i
    path = tmp_path / "wide.npz"
    np.savez(path, db=db, queries=queries)
    from tscm.data.formats import load_placeset
    from tscm.evaluation.protocol import evaluate_data_set
    from tscm.evaluation.ranking import rank_exact

    placeset = load_placeset(small)
    result = evaluate_data_set(placeset, descriptors=str(path))
    reference = evaluate_data_set(placeset, descriptors=_write(tmp_path / "narrow.npz", db - 1e8, queries - 1e8))
    assert result.recall == reference.recall
    from tscm.evaluation.recall import check_descriptors

    centred_db, centred_queries = check_descriptors(placeset, db, queries)
    assert rank_exact(centred_db, centred_queries, 1).indices[:, 0].tolist() == [3, 2, 1]


def _write(path, db, queries):
    np.savez(path, db=db, queries=queries)
    return str(path)


def test_float64_descriptors_beyond_float32_are_refused(small, tmp_path, capsys):
    db = np.zeros((4, 8))
    db[0, 0] = 1e300
    path = _write(tmp_path / "huge.npz", db, np.zeros((3, 8)))
    short(assert_refused(tscm(capsys, "evaluate", small, "--descriptors", path), "evaluate", "huge.npz", "float32"))


@pytest.mark.parametrize("value, pairs", [("-5", None), (str(10**30), 0), (str(2**63), 0), ("1", 3)])
def test_export_descriptors_exclude_recent_of_any_size(value, pairs, tmp_path, checkpoints, capsys):
    """10**30 frames once raised OverflowError after every image was described; -5 was refused only then."""
    folder = tmp_path / "frames"
    for i in range(4):
        write_image(folder / f"{i:03d}.jpg", seed=i)
    out, pairs_file = tmp_path / "x.h5", tmp_path / "pairs.txt"
    outcome = tscm(capsys, "export-descriptors", "--checkpoint", checkpoints["student"], "--images", folder,
                   "--out", out, "--pairs", pairs_file, "--exclude-recent", value)
    if pairs is None:
        assert_refused(outcome, "export-descriptors", "--exclude-recent", value)
        assert "describing" not in outcome.err, outcome.err  # refused before any image was read
        assert not out.exists() and not pairs_file.exists()
    else:
        assert_no_traceback(outcome)
        assert outcome.code == 0, outcome.err
        assert len(pairs_file.read_text(encoding="utf-8").splitlines()) == pairs


@pytest.mark.parametrize("length", [str(2 * 10**9), str(10**30)])
def test_a_sequence_longer_than_the_traversal_scores_as_the_whole_traversal(length, tmp_path, checkpoints, capsys):
    """--sequence 2e9 once tried to allocate 74 GB; 10**30 raised OverflowError. A path cannot reach before
    the first query, so any length past the queries scores as the whole traversal."""
    for i in range(4):
        write_image(tmp_path / f"db{i}.jpg", seed=i)
    for i in range(3):
        write_image(tmp_path / f"q{i}.jpg", seed=20 + i)
    manifest = write_manifest(tmp_path / "frames.csv", [(f"db{i}.jpg", i, "database") for i in range(4)]
                              + [(f"q{i}.jpg", i, "query") for i in range(3)], header="path,frame,role")
    results = {}
    for given in ("3", length):
        out = tmp_path / f"seq-{len(given)}.json"
        outcome = tscm(capsys, "evaluate", manifest, "--checkpoint", checkpoints["student"], "--sequence", given,
                       "--json", out)
        assert_no_traceback(outcome)
        assert outcome.code == 0, outcome.err
        results[given] = json.loads(out.read_text(encoding="utf-8"))["recall"]
    assert results["3"] == results[length]


# ----- images as displayed --------------------------------------------------------------------------


def test_exif_orientation_is_applied_by_every_command(tmp_path, checkpoints):
    """A photo stored sideways with EXIF orientation 6 is described as its upright copy."""
    from PIL import Image

    from tscm.data.images import load_rgb
    from tscm.evaluation.extract import InputSpec, extract_descriptors
    from tscm.models.checkpoint import load_checkpoint

    pixels = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "upright.png")
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(pixels, 1)))
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored.save(tmp_path / "sideways.png", exif=exif.tobytes())
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "sideways.png")), pixels)
    model, meta = load_checkpoint(checkpoints["student"])
    upright, sideways = extract_descriptors(model, [tmp_path / "upright.png", tmp_path / "sideways.png"], InputSpec.of(meta))
    assert np.array_equal(upright, sideways)


@pytest.mark.parametrize("orientation", [0, 9, 65535])
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_an_exif_orientation_outside_1_to_8_leaves_the_pixels_as_stored(orientation, suffix, tmp_path):
    """Values the EXIF standard does not define are ignored, never a traceback (held, untested)."""
    from PIL import Image

    from tscm.data.images import load_rgb

    pixels = np.full((30, 20, 3), 128, np.uint8)
    pixels[:10] = 0  # a dark band on top: a rotation would move it
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"odd{suffix}"
    stored.save(path, exif=exif.tobytes(), **({"quality": 100} if suffix == ".jpg" else {}))
    loaded = np.asarray(load_rgb(path))
    assert loaded.shape == pixels.shape
    assert loaded[:10].mean() < 20 < 100 < loaded[10:].mean()


def test_no_traceback_for_a_value_that_cannot_be_printed(tmp_path, capsys):
    """An override whose value is 5000 digits long is quoted as an excerpt."""
    outcome = tscm(capsys, "train-teacher", "--set", f"run.output_dir={tmp_path}", "--set", "train.lr=" + "9" * 5000)
    assert_no_traceback(outcome)
    short(assert_refused(outcome, "train-teacher", "train.lr"))


# Count options far beyond any machine: refused before a thread, process or batch is made.
HUGE_COUNTS = [
    (["evaluate", "{csv}", "--checkpoint", "{ck}", "--num-workers", "100000"], "--num-workers"),
    (["evaluate", "{csv}", "--checkpoint", "{ck}", "--batch-size", str(10**12)], "--batch-size"),
    (["index", "build", "--checkpoint", "{ck}", "--images", "{csv}", "--out", "{tmp}/map.idx", "--threads", str(10**6)],
     "--threads"),
    (["export-descriptors", "--checkpoint", "{ck}", "--images", "{csv}", "--out", "{tmp}/x.h5", "--batch-size", str(2**40)],
     "--batch-size"),
    (["check-data", "{csv}", "--workers", str(10**7)], "--workers"),
    (["synth", "{tmp}/city", "--preset", "tiny", "--workers", "5000"], "--workers"),
    (["demo", "--data", "{csv}", "--out", "{tmp}/run", "--quick", "--threads", str(10**5)], "--threads"),
    (["bench", "--quick", "--batch-sizes", "1", str(10**9)], "--batch-sizes"),
]


@pytest.mark.parametrize("words, named", HUGE_COUNTS, ids=[f"{w[0]} {named}" for w, named in HUGE_COUNTS])
def test_a_huge_count_option_is_refused_before_work(words, named, tmp_path, capsys, checkpoints, stop_before_work):
    manifest, _, _ = image_set(tmp_path / "set")
    argv = [w.format(csv=manifest, ck=checkpoints["student"], tmp=tmp_path) for w in words]
    outcome = tscm(capsys, *argv)
    short(assert_refused(outcome, argv[0], named, "at most"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


# bench's count options: each outside its range is refused before the machine is even measured, naming the
# option, the value and the range it accepts.
BENCH_COUNTS = [
    (["matching", "--sizes", "1000", str(10**9)], "--sizes", str(10**9), "2..10000000"),
    (["matching", "--sizes", "1"], "--sizes", "1", "2..10000000"),
    (["matching", "--queries", "0"], "--queries", "0", "1..1000000"),
    (["matching", "--queries", "9" * 40], "--queries", "9" * 40, "1..1000000"),
    (["matching", "--single", "-1"], "--single", "-1", "1..1000000"),
    (["matching", "--dim", str(2**20)], "--dim", str(2**20), "2..65536"),
    (["matching", "--rounds", "0"], "--rounds", "0", "1..1000"),
    (["extraction", "--cycles", str(10**6)], "--cycles", str(10**6), "1..1000"),
    (["extraction", "--calls", "0"], "--calls", "0", "1..100000"),
    (["mining", "--mining-db", "12"], "--mining-db", "12", "13..1000000"),
    (["mining", "--mining-queries", str(10**8)], "--mining-queries", str(10**8), "1..1000000"),
    (["training", "--training-steps", "0"], "--training-steps", "0", "1..100000"),
    (["matching", "--seed", "-1"], "--seed", "-1", "0..4294967295"),
    (["extraction", "--budget", "1e12"], "--budget", "1e+12", "86400"),
    (["matching", "--sizes", "2000000", "--dim", "4096"], "--sizes 2000000 with --dim 4096", "30.5 GiB", "size × dim"),
    (["mining", "--mining-db", "1000000", "--mining-queries", "1000000"], "--mining-db 1000000", "--mining-queries",
     "≤ 268435456"),
]


@pytest.mark.parametrize("words, option, value, accepted", BENCH_COUNTS,
                         ids=[f"{option} {value[:12]}" for _, option, value, _ in BENCH_COUNTS])
def test_a_bench_count_out_of_range_is_refused_before_work(words, option, value, accepted, tmp_path, capsys,
                                                           stop_before_work):
    out = tmp_path / "bench"
    outcome = tscm(capsys, "bench", *words, "--no-gpu", "--out", out)
    short(assert_refused(outcome, "bench", f"{option}:" if " " not in option else option, value, accepted))
    assert not out.exists()
