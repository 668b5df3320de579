"""Loop closure over one robot traversal (a ROS bag's camera topic): `tscm loop-closure`.

Every kept frame goes through `PlaceRecognizer.observe`: it is matched against the traversal's
earlier frames, leaving out those of the last `exclude_recent` seconds (the robot's own recent
past is never a loop closure), then joins the map. The best match of each frame is written to
`loop_closures.csv`, one row per processed frame:

    query_stamp,match_stamp,score,accepted,query_index,match_index,confidence,query_east,query_north,match_east,match_north,match_distance_m

stamps are header stamps in seconds (exact decimals of the nanosecond stamps); `score` is the
recognizer's score (squared L2 for single frames, the SeqSLAM sequence score for `sequence` > 1;
smaller is more alike); `accepted` is true only under a calibrated threshold taken from an index
file (`index`, `tscm index calibrate`; searched in that index's space: an empty copy of it, same
back-end and PCA); without one every best match is listed, unaccepted.
A frame with no earlier frame outside the exclusion window has empty match columns.

Sequences (`sequence` = L > 1) go through `observe` too: each frame's exact distances (in the index's
space) to every earlier frame are scored over the last L frames (`tscm.evaluation.sequence.SequenceMatcher`
on a growing map: the score `tscm index calibrate --sequence L` calibrates), with frames not yet seen
counted at the largest squared distance two unit descriptors can have, so no sequence runs through
the future.

Pictures: `trajectory.png`, the path with accepted loop closures drawn between the two positions
(positions known), else `loop_closures.png`, match stamp against query stamp. `rerun` writes a
Rerun recording (.rrd) of the frames, the trajectory and the loop-closure links (optional
package rerun-sdk).
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tscm.data.formats.bag_frames import stamp_text
from tscm.data.formats.rosbag import BagTraversal, iter_bag_images
from tscm.evaluation.decision import DecisionRule
from tscm.errors import TscmError
from tscm.fileio import atomic_group, atomic_path, check_output_folder, write_text_atomic

CSV_NAME = "loop_closures.csv"
CSV_COLUMNS = ("query_stamp", "match_stamp", "score", "accepted", "query_index", "match_index", "confidence",
               "query_east", "query_north", "match_east", "match_north", "match_distance_m")
TRAJECTORY_PICTURE = "trajectory.png"
STAMP_PICTURE = "loop_closures.png"
RERUN_HINT = "--rerun needs the rerun-sdk package: pip install 'tscm[rerun]'"


@dataclass
class LoopClosureRow:
    query_index: int
    match_index: int | None
    score: float | None
    accepted: bool
    confidence: float | None


@dataclass
class LoopClosureRun:
    traversal: BagTraversal
    rows: list[LoopClosureRow]
    csv_path: Path
    picture: Path
    threshold: dict[str, Any] | None
    seconds: float
    rerun_path: Path | None = None

    @property
    def accepted(self) -> int:
        return sum(row.accepted for row in self.rows)

    @property
    def matched(self) -> int:
        return sum(row.match_index is not None for row in self.rows)


def _threshold_index(index_path: str | Path, sequence: int):
    """An empty copy of the index at `index_path` (same back-end, PCA and trained quantisers, so its
    distances are in the calibrated space) carrying its thresholds, and the threshold that applies to
    `sequence`-frame scores; TscmError when the file holds none for that."""
    from tscm.deploy.retrieval.index import PlaceIndex

    calibrated = PlaceIndex.load(index_path)
    empty = calibrated.empty_copy()
    empty.thresholds = list(calibrated.thresholds)
    threshold = empty.threshold(sequence)
    if threshold is None:
        what = "single frames" if sequence == 1 else f"{sequence}-frame sequences"
        held = ", ".join(f"L={t.get('sequence_length', 1)}" + ("" if t.get("space") == calibrated.space() else " (stale)")
                         for t in calibrated.thresholds) or "none"
        raise TscmError(f"{index_path}: no threshold calibrated for {what} in this index's search space (held: "
                        f"{held}); run tscm index calibrate --index {index_path}"
                        f"{'' if sequence == 1 else f' --sequence {sequence}'}")
    return empty, threshold


def run_loop_closure(traversal: BagTraversal, checkpoint: str | Path, out: str | Path, *,
                     exclude_recent: float = 30.0, sequence: int = 1, index: str | Path | None = None,
                     rerun: str | Path | None = None, runtime: str = "torch", threads: int | None = None,
                     progress: bool = True) -> LoopClosureRun:
    """Stream `traversal` through a PlaceRecognizer of `checkpoint`; write the CSV and picture to `out`."""
    from tscm.deploy.retrieval.recognizer import PlaceRecognizer
    from tscm.threads import limit_threads

    if not (np.isfinite(exclude_recent) and exclude_recent >= 0):
        raise TscmError(f"--exclude-recent: expected a number of seconds ≥ 0, got {exclude_recent:g}")
    if not (isinstance(sequence, int) and sequence >= 1):
        raise TscmError(f"--sequence: expected a number of frames ≥ 1, got {sequence!r}")
    out = Path(out)
    check_loop_closure_outputs(traversal.bag, checkpoint, out, index=index, rerun=rerun)  # before any work
    threshold = empty = None
    with limit_threads(torch=threads):
        if index is not None:
            empty, threshold = _threshold_index(index, sequence)
            rule = DecisionRule.of(threshold)
            if rule.score == "ratio" and rule.unit == "m" and traversal.xy is None:
                raise TscmError("the threshold's 'ratio' score compares places in metres, but this traversal has "
                                "no positions; give --position-topic, or calibrate on frame-ordered data")
            recognizer = PlaceRecognizer.from_checkpoint(checkpoint, index=empty, runtime=runtime, threads=threads)
        else:
            recognizer = PlaceRecognizer.from_checkpoint(checkpoint, backend="flat", runtime=runtime, threads=threads)
        recorder = _start_rerun(rerun) if rerun is not None else None
        try:
            rows, elapsed = _stream(recognizer, traversal, exclude_recent, sequence, recorder, progress)
        except BaseException:
            if recorder is not None:
                _abandon_rerun(recorder)
            raise
    with atomic_group():  # the table and its picture together, or neither
        csv_path = write_loop_closure_csv(out / CSV_NAME, traversal, rows)
        picture = plot_loop_closures(out, traversal, rows)
    rerun_path = None if recorder is None else _finish_rerun(recorder, traversal, rows)
    return LoopClosureRun(traversal, rows, csv_path, picture, threshold, elapsed, rerun_path)


def check_loop_closure_outputs(bag: str | Path, checkpoint: str | Path, out: str | Path, *,
                               index: str | Path | None = None, rerun: str | Path | None = None) -> None:
    """Refuse, before the bag is read, an --out folder that is a file, the bag's or the checkpoint's own
    folder, or whose files (the CSV and either picture) are inputs or cannot be written; and a --rerun
    file that is a folder, an input or one of those files."""
    if rerun is not None:
        check_rerun(rerun)
    inputs = {"the bag": bag, "the --checkpoint input": checkpoint, "the --index input": index}
    if (Path(bag).parent / "metadata.yaml").is_file():  # a ROS 2 bag's storage file named: its folder is the bag
        inputs["the bag's folder"] = Path(bag).parent
    check_output_folder("--out", out, (CSV_NAME, TRAJECTORY_PICTURE, STAMP_PICTURE), inputs, {"--rerun": rerun})


def _stream(recognizer, traversal: BagTraversal, exclude_recent: float, sequence: int,
            recorder, progress: bool) -> tuple[list[LoopClosureRow], float]:
    """One row per frame (`PlaceRecognizer.observe`), in stamp order, and the seconds the stream took."""
    from tqdm import tqdm

    seconds = traversal.seconds
    # no frame looks back past the first: a longer L scores the same, and a huge one would not fit in memory
    sequence = min(sequence, max(len(traversal), 1))
    rows: list[LoopClosureRow] = []
    tic = time.perf_counter()
    frames = tqdm(iter_bag_images(traversal), total=len(traversal), desc="loop closure", unit="frame",
                  disable=None if progress else True)
    for position, image in frames:
        xy = None if traversal.xy is None else traversal.xy[position]
        places = recognizer.observe(image, time=float(seconds[position]), exclude_recent=exclude_recent, k=1, xy=xy,
                                    sequence=sequence)
        row = _row_of_place(position, places[0] if places else None)
        rows.append(row)
        if recorder is not None:
            _log_frame(recorder, traversal, position, image, row)
    return rows, time.perf_counter() - tic


def _row_of_place(position: int, place) -> LoopClosureRow:
    if place is None:
        return LoopClosureRow(position, None, None, False, None)
    return LoopClosureRow(position, int(place.id), float(place.distance), bool(place.accepted),
                          None if place.confidence is None else float(place.confidence))


# ---- outputs ----------------------------------------------------------------------------------
def _number(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_loop_closure_csv(path: Path, traversal: BagTraversal, rows: list[LoopClosureRow]) -> Path:
    """`loop_closures.csv` (module doc), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    xy = traversal.xy
    for row in rows:
        match = row.match_index
        query_xy = None if xy is None else xy[row.query_index]
        match_xy = None if xy is None or match is None else xy[match]
        writer.writerow([
            stamp_text(traversal.stamp_ns[row.query_index]),
            "" if match is None else stamp_text(traversal.stamp_ns[match]),
            "" if row.score is None else f"{row.score:.6g}",
            "true" if row.accepted else "false",
            row.query_index,
            "" if match is None else match,
            _number(row.confidence, 4),
            _number(None if query_xy is None else query_xy[0], 3),
            _number(None if query_xy is None else query_xy[1], 3),
            _number(None if match_xy is None else match_xy[0], 3),
            _number(None if match_xy is None else match_xy[1], 3),
            _number(None if match_xy is None else float(np.hypot(*(query_xy - match_xy))), 3),
        ])
    write_text_atomic(path, buffer.getvalue())
    return path


def plot_loop_closures(out: Path, traversal: BagTraversal, rows: list[LoopClosureRow]) -> Path:
    """The trajectory with accepted loop closures (positions known), else match stamp against query stamp."""
    from matplotlib.figure import Figure

    accepted = [row for row in rows if row.accepted and row.match_index is not None]
    fig = Figure(figsize=(6.4, 5.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    title = f"{traversal.bag.name} {traversal.topic}: {len(rows)} frames, {len(accepted)} accepted loop closures"
    if traversal.xy is not None:
        xy = traversal.xy
        ax.plot(xy[:, 0], xy[:, 1], "-", color="0.55", linewidth=1.2, label="trajectory", zorder=1)
        ax.scatter(xy[:1, 0], xy[:1, 1], color="black", marker="o", s=30, label="start", zorder=3)
        for number, row in enumerate(accepted):
            a, b = xy[row.query_index], xy[row.match_index]
            ax.plot([a[0], b[0]], [a[1], b[1]], "-", color="tab:red", linewidth=1.5, zorder=2,
                    label="accepted loop closure" if number == 0 else None)
        ax.set_xlabel("east (m)" if traversal.position_type and "NavSatFix" in traversal.position_type else "x (m)")
        ax.set_ylabel("north (m)" if traversal.position_type and "NavSatFix" in traversal.position_type else "y (m)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(loc="best", fontsize=8)
        path = out / TRAJECTORY_PICTURE
    else:
        seconds = traversal.seconds
        matched = [row for row in rows if row.match_index is not None]
        ax.scatter([seconds[r.query_index] for r in matched], [seconds[r.match_index] for r in matched], s=6,
                   color="0.6", label="best match")
        ax.scatter([seconds[r.query_index] for r in accepted], [seconds[r.match_index] for r in accepted], s=12,
                   color="tab:red", label="accepted")
        ax.set_xlabel("query time (s since the first frame)")
        ax.set_ylabel("matched frame's time (s)")
        ax.legend(loc="best", fontsize=8)
        path = out / STAMP_PICTURE
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ---- Rerun ------------------------------------------------------------------------------------
@dataclass
class _RerunLog:
    recording: Any
    target: Path
    partial: Path  # written while the run goes on, renamed to `target` at the end


def check_rerun(path: str | Path) -> None:
    try:
        import rerun  # noqa: F401
    except ImportError:
        raise TscmError(RERUN_HINT) from None
    if Path(path).is_dir():
        raise TscmError(f"--rerun {path}: is a folder; give a file name ending in .rrd")


def _start_rerun(path: str | Path) -> _RerunLog:
    """A recording streaming to a temporary file beside `path` (Rerun saves only what is logged after `save`)."""
    import rerun as rr

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    recording = rr.RecordingStream("tscm_loop_closure")
    recording.save(str(partial))
    return _RerunLog(recording, target, partial)


def _log_frame(log: _RerunLog, traversal: BagTraversal, position: int, image, row: LoopClosureRow) -> None:
    import rerun as rr

    recording = log.recording
    recording.set_time("stamp", timestamp=traversal.stamp_ns[position] / 1e9)
    recording.log("camera/image", rr.Image(np.asarray(image.convert("RGB"))))
    if row.score is not None:
        recording.log("score", rr.Scalars(row.score))
    if traversal.xy is not None:
        recording.log("world/robot", rr.Points2D([traversal.xy[position]], radii=1.0))
        if row.accepted and row.match_index is not None:
            recording.log("world/loop_closure", rr.LineStrips2D([[traversal.xy[position], traversal.xy[row.match_index]]],
                                                                colors=[[220, 40, 40]]))


def _finish_rerun(log: _RerunLog, traversal: BagTraversal, rows: list[LoopClosureRow]) -> Path:
    import os

    import rerun as rr

    recording = log.recording
    if traversal.xy is not None:
        recording.log("world/trajectory", rr.LineStrips2D([traversal.xy], colors=[[140, 140, 140]]), static=True)
        links = [[traversal.xy[r.query_index], traversal.xy[r.match_index]] for r in rows
                 if r.accepted and r.match_index is not None]
        if links:
            recording.log("world/loop_closures", rr.LineStrips2D(links, colors=[[220, 40, 40]]), static=True)
    recording.flush()
    recording.disconnect()  # closes the file
    os.replace(log.partial, log.target)
    return log.target


def _abandon_rerun(log: _RerunLog) -> None:
    try:
        log.recording.disconnect()
    finally:
        log.partial.unlink(missing_ok=True)
