"""VPR-Bench layout: explicit ground truth from ground_truth_new.npy, read without running pickles."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess

import numpy as np
import pytest

from tscm.data.formats import load_placeset, read_vpr_bench
from tscm.errors import TscmError

REF_NAMES = ["0000.jpg", "0001.jpg", "0002.png", "0003.jpg"]
QUERY_NAMES = ["0000.jpg", "0001.jpg", "0002.jpg"]


def object_rows(rows) -> np.ndarray:
    """An N×2 object array [query_index, matches], as VPR-Bench saves it (matches may be ragged)."""
    array = np.empty((len(rows), 2), dtype=object)
    for i, (query, matches) in enumerate(rows):
        array[i, 0], array[i, 1] = query, matches
    return array


def write_vpr_bench(root, ground_truth) -> object:
    for folder, names in (("ref", REF_NAMES), ("query", QUERY_NAMES)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).write_bytes(b"")  # images are never opened by the reader
    (root / "ref" / "notes.txt").write_text("not an image")
    np.save(root / "ground_truth_new.npy", ground_truth, allow_pickle=True)
    return root


def test_object_array_round_trips(tmp_path):
    # Rows out of query order; matches as a list, a 1-D array of int64, numpy scalars, and empty.
    rows = [(2, []), (0, [1, 0]), (np.int64(1), np.array([3, 2], dtype=np.int64))]
    root = write_vpr_bench(tmp_path / "gardens", object_rows(rows))
    ps = load_placeset(root, split="test")
    assert (ps.name, ps.split, ps.unit, ps.num_db, ps.num_queries) == ("gardens", "test", "explicit", 4, 3)
    assert ps.db_paths == [root.resolve() / "ref" / n for n in REF_NAMES]
    assert ps.query_paths == [root.resolve() / "query" / n for n in QUERY_NAMES]
    assert ps.db_xy is None and not ps.has_positions
    assert [list(p) for p in ps.positives(25)] == [[0, 1], [2, 3], []]


def test_one_dimensional_object_array_of_pairs(tmp_path):
    array = np.empty(3, dtype=object)
    for query in range(3):
        array[query] = [query, [np.int64(query)]]
    ps = read_vpr_bench(write_vpr_bench(tmp_path, array))
    assert [list(p) for p in ps.positives()] == [[0], [1], [2]]


def test_plain_integer_array_rows(tmp_path):
    root = write_vpr_bench(tmp_path, np.array([[0, 0, 1], [1, 1, 2], [2, 3, 3]], dtype=np.int32))
    assert [list(p) for p in read_vpr_bench(root).positives()] == [[0, 1], [1, 2], [3]]


class Payload:
    """Pickles as a call to `function(*arguments)`: what an attacker's file would carry."""

    def __init__(self, function, arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def payloads(marker):
    return {
        "os.system": (os.system, (f"touch '{marker}'",)),
        "builtins.eval": (builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize("kind", list(payloads("x")))
def test_pickle_payloads_are_refused_and_do_not_run(tmp_path, kind):
    marker = tmp_path / "payload-ran"
    function, arguments = payloads(marker)[kind]
    rows = object_rows([(0, [0]), (1, Payload(function, arguments)), (2, [])])
    root = write_vpr_bench(tmp_path / "set", rows)
    with pytest.raises(TscmError) as error:
        read_vpr_bench(root)
    message = str(error.value)
    assert str(root.resolve() / "ground_truth_new.npy") in message and "refused to unpickle" in message
    refused = {"os.system": ("posix.system", "nt.system"), "subprocess.call": ("subprocess.call",)}.get(kind, (kind,))
    assert any(name in message for name in refused), message
    assert not marker.exists()
    # The payload is live: an unrestricted load runs it. This proves the test above meant something.
    np.load(root / "ground_truth_new.npy", allow_pickle=True)
    assert marker.exists()


def test_payload_at_top_level_is_refused(tmp_path):
    # Not even an array: the whole pickled payload is the call.
    marker = tmp_path / "payload-ran"
    root = write_vpr_bench(tmp_path / "set", object_rows([(0, [0]), (1, [1]), (2, [2])]))
    npy = root / "ground_truth_new.npy"
    data = npy.read_bytes()
    header_end = data.index(b"\n") + 1
    npy.write_bytes(data[:header_end] + pickle.dumps(Payload(os.system, (f"touch '{marker}'",)), protocol=3))
    with pytest.raises(TscmError, match=r"refused to unpickle (posix|nt)\.system"):
        read_vpr_bench(root)
    assert not marker.exists()


@pytest.mark.parametrize(
    "ground_truth, message",
    [
        (object_rows([(0, [0]), (1, [1])]), r"2 rows for 3 query images"),
        (object_rows([(0, [0]), (0, [1]), (2, [2])]), r"row 1: query index 0 appears a second time"),
        (object_rows([(0, [0]), (1, [4]), (2, [2])]), r"row 1: ref index 4 is outside 0..3"),
        (object_rows([(0, [0]), (3, [1]), (2, [2])]), r"row 1: query index 3 is outside 0..2"),
        (object_rows([(0, [0]), (1, [-1]), (2, [2])]), r"row 1: ref index -1 is outside 0..3"),
        (object_rows([(0, [0]), (1, [1.5]), (2, [2])]), r"row 1: ref index: expected an integer index, got 1.5"),
        (object_rows([(0, [0]), (True, [1]), (2, [2])]), r"row 1: query index: expected an integer index, got True"),
        (object_rows([(0, [0]), (1, 7), (2, [2])]), r"row 1: expected a list of ref indices, got 7"),
        (object_rows([(0, [0]), (1, "1"), (2, [2])]), r"row 1: expected a list of ref indices, got '1'"),
        (np.zeros((3, 2)), r"expected rows \[query_index, \[ref indices…\]\], got an array of float64"),
        (np.arange(3), r"integer ground-truth array must be N×\(1\+M\).*\(3,\)"),
        (np.empty((3, 3), dtype=object), r"object array of shape \(3, 3\)"),
    ],
)
def test_ground_truth_errors(tmp_path, ground_truth, message):
    root = write_vpr_bench(tmp_path, ground_truth)
    with pytest.raises(TscmError, match=message) as error:
        read_vpr_bench(root)
    assert "ground_truth_new.npy" in str(error.value)


def test_not_an_npy_file(tmp_path):
    root = write_vpr_bench(tmp_path, object_rows([(0, [0]), (1, [1]), (2, [2])]))
    (root / "ground_truth_new.npy").write_bytes(b"not numpy at all")
    with pytest.raises(TscmError, match=r"ground_truth_new.npy: not a .npy file"):
        read_vpr_bench(root)
    np.save(root / "ground_truth_new.npy", object_rows([(0, [0]), (1, [1]), (2, [2])]), allow_pickle=True)
    data = (root / "ground_truth_new.npy").read_bytes()
    (root / "ground_truth_new.npy").write_bytes(data[:-20])  # cut short
    with pytest.raises(TscmError, match=r"ground_truth_new.npy: damaged pickled array"):
        read_vpr_bench(root)


def test_layout_found_only_with_all_three_parts(tmp_path):
    root = write_vpr_bench(tmp_path, object_rows([(0, [0]), (1, [1]), (2, [2])]))
    (root / "ground_truth_new.npy").unlink()
    with pytest.raises(TscmError, match=r"no data set found.*ref/ \+ query/ \+ ground_truth_new.npy.*summer/ \+ winter/"):
        load_placeset(root)
    with pytest.raises(TscmError, match=r"expected ref/, query/ and ground_truth_new.npy"):
        read_vpr_bench(root)
