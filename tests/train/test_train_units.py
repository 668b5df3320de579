"""Training building blocks: state packing, tuple layout, logs, folder replacement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tscm.data.mining import MinedTuple
from tscm.data.tuples import TupleArrays, scatter_to_layout, tuple_layout
from tscm.errors import TscmError
from tscm.train.metrics_log import CsvTable
from tscm.train.checkpoints import existing_folder, replace_folder
from tscm.train.training_state import load_training_state, pack_state, save_training_state, unpack_state


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_optimizer_state_round_trips_through_files(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        optimizer.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "numpy": np.arange(6, dtype=np.int64).reshape(2, 3),
        "pair": (1, "two", None, 2.5, True),
        "big_int": 2**100 + 7,
        "__odd": {"x": 1},
        "rng": torch.get_rng_state(),
    }
    save_training_state(tmp_path, state)
    loaded = load_training_state(tmp_path)
    assert _same(state, loaded)
    assert list(loaded["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys kept
    # an optimiser restored from it continues exactly like the original
    other = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    other.load_state_dict(loaded["optimizer"])
    assert _same(other.state_dict(), optimizer.state_dict())


def test_pack_state_rejects_objects():
    with pytest.raises(TscmError, match="cannot store"):
        pack_state({"f": object()})
    structure, tensors = pack_state({"a": torch.ones(2)})
    assert _same(unpack_state(structure, tensors), {"a": torch.ones(2)})


def test_missing_training_state_is_a_clear_error(tmp_path):
    with pytest.raises(TscmError, match="not a resumable checkpoint"):
        load_training_state(tmp_path)


def test_training_state_json_nested_too_deeply_is_refused(tmp_path):
    save_training_state(tmp_path, {"step": 1})
    (tmp_path / "training_state.json").write_text("[" * 100 + "]" * 100, encoding="utf-8")
    with pytest.raises(TscmError, match="unreadable training state.*nested deeper"):
        load_training_state(tmp_path)


def test_tuple_layout_matches_a_plain_reference():
    mined = [
        MinedTuple(3, 10, np.array([5, 6, 7])),
        MinedTuple(0, 11, np.array([8])),
        MinedTuple(2, 12, np.array([1, 2])),
    ]
    k, num_db = 3, 20
    tuples = TupleArrays.from_mined(mined, k)
    layout = tuple_layout(tuples, num_db)
    # reference: walk the padded [q, p, n1..nK] layout slot by slot
    keys, positions, mask = [], [], np.zeros((3, k), dtype=bool)
    for row, item in enumerate(mined):
        base = row * (k + 2)
        keys += [num_db + item.query, item.positive]
        positions += [base, base + 1]
        for j, negative in enumerate(item.negatives):
            keys.append(negative)
            positions.append(base + 2 + j)
            mask[row, j] = True
    assert layout.keys.tolist() == keys
    assert layout.positions.tolist() == positions
    assert np.array_equal(layout.negative_mask.numpy(), mask)
    descriptors = torch.randn(len(keys), 4, requires_grad=True)
    padded = scatter_to_layout(descriptors, layout)
    assert padded.shape == (3 * (k + 2), 4)
    for n, position in enumerate(positions):
        assert torch.equal(padded[position], descriptors[n])
    empty = [p for p in range(3 * (k + 2)) if p not in positions]
    assert torch.count_nonzero(padded[empty]) == 0
    padded.sum().backward()  # gradients reach the real rows
    assert torch.equal(descriptors.grad, torch.ones_like(descriptors))


def test_tuple_arrays_round_trip_and_reject_bad_tuples():
    tuples = TupleArrays.from_mined([(1, 2, [3, 4])], 3)
    again = TupleArrays.from_tensors(tuples.to_tensors())
    assert again.negatives.tolist() == [[3, 4, -1]] and again.query.tolist() == [1]
    with pytest.raises(TscmError, match="negatives"):
        TupleArrays.from_mined([(1, 2, [])], 3)
    with pytest.raises(TscmError, match="negatives"):
        TupleArrays.from_mined([(1, 2, [1, 2, 3, 4])], 3)


def test_csv_table_grows_columns_and_truncates(tmp_path):
    table = CsvTable(tmp_path / "steps.csv")
    table.append({"step": 1, "loss": 0.5})
    table.append({"step": 2, "loss": 0.4, "soft": 0.1})
    table.append({"step": 3, "loss": 0.3, "soft": 0.2})
    table.flush()
    again = CsvTable(tmp_path / "steps.csv")
    assert again.columns == ["step", "loss", "soft"]
    again.truncate("step", 2)
    again.flush()
    lines = (tmp_path / "steps.csv").read_text().splitlines()
    assert lines == ["step,loss,soft", "1,0.5,", "2,0.4,0.1"]


def test_replace_folder_keeps_one_complete_copy(tmp_path):
    target = tmp_path / "last"
    for version in ("a", "b"):
        staging = tmp_path / "last.new"
        staging.mkdir()
        (staging / "v.txt").write_text(version)
        replace_folder(staging, target)
        assert (target / "v.txt").read_text() == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # a crash between the two renames leaves only last.old: it is still found
    target.rename(tmp_path / "last.old")
    assert existing_folder(target) == tmp_path / "last.old"
