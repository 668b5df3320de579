"""ROS bags as data sets: camera frames with their header stamps, and positions interpolated to them.

Reads ROS 1 `.bag` files, ROS 2 bags (the folder with `metadata.yaml`, or one `.db3` / `.mcap`
storage file) with `rosbags` (pure Python, no ROS install; the optional extra `tscm[ros]`).

- Images: `sensor_msgs/Image` (rgb8, bgr8, rgba8, bgra8, mono8, mono16, and their OpenCV aliases
  8UC1, 8UC3, 8UC4, 16UC1) and `sensor_msgs/CompressedImage` (jpeg, png). A frame's time is its
  header stamp (the bag's receive time when the stamp is zero).
- Positions, in planar metres: `sensor_msgs/NavSatFix` projected onto a local east/north plane at
  the first fix (an ellipsoidal equirectangular approximation: WGS-84 radii of curvature at the
  origin; under 0.1 % scale error within ~10 km of it), fixes without a fix status or with NaN
  skipped; `nav_msgs/Odometry` or `geometry_msgs/PoseStamped` x/y as recorded (their frame: odom
  or map). Positions are interpolated linearly to each frame's stamp; frames outside the position
  stream, or in a gap longer than `MAX_POSITION_GAP_S`, are dropped and counted.
- Subsampling: `every="0.5s"` keeps a frame at least 0.5 s after the last kept one, `every="2m"` one
  at least 2 m (straight line) from the last kept one.

Frames are never exported to files. A frame's path is virtual, `BAG#TOPIC@RECEIVE_NS`; opening a
bag, reading its messages, decoding an image message and reading a frame by its path are
`tscm.data.formats.bag_frames`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from tscm.data.formats.bag_frames import bag_frame_path, decode_image, open_bag, read_messages
from tscm.data.places import PlaceSet
from tscm.errors import TscmError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
NAVSATFIX = "sensor_msgs/msg/NavSatFix"
ODOMETRY = "nav_msgs/msg/Odometry"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POSITION_TYPES = (NAVSATFIX, ODOMETRY, POSE_STAMPED)  # in the order a position topic is chosen automatically
NO_POSITIONS = "none"  # --position-topic none: frames only
# Interpolating across a longer gap in the position stream would invent positions.
MAX_POSITION_GAP_S = 5.0

# WGS-84 ellipsoid.
_SEMI_MAJOR_M = 6378137.0
_FLATTENING = 1 / 298.257223563
_ECCENTRICITY2 = _FLATTENING * (2 - _FLATTENING)


# ---- spacing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spacing:
    """Keep a frame only this far from the last kept one: seconds ("s") or metres ("m")."""

    value: float
    unit: str

    @classmethod
    def parse(cls, text: str | None) -> Spacing | None:
        if text is None or str(text).strip() == "":
            return None
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|m)\s*", str(text))
        if match is None or float(match[1]) <= 0:
            raise TscmError(f"--every {text!r}: expected a positive time or distance with its unit, e.g. 0.5s or 2m")
        return cls(float(match[1]), match[2])

    def __str__(self) -> str:
        return f"{self.value:g}{self.unit}"


# ---- what to read ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BagSelection:
    """Which topics of a bag make a data set (None: the only topic of its kind), and which frames."""

    topic: str | None = None
    position_topic: str | None = None  # "none": no positions
    every: str | None = None  # "0.5s" or "2m"
    query_bag: Path | None = None  # a second traversal: its frames are the queries


@dataclass
class BagTraversal:
    """The frames kept from one image topic of one bag, in stamp order, with positions if known."""

    bag: Path
    topic: str
    image_type: str
    receive_ns: np.ndarray  # int64, what finds each message again
    stamp_ns: np.ndarray  # int64 header stamps
    xy: np.ndarray | None  # N×2 metres, or None without positions
    position_topic: str | None = None
    position_type: str | None = None
    origin: tuple[float, float] | None = None  # (latitude, longitude) of the local plane, NavSatFix only
    messages: int = 0  # image messages on the topic
    dropped: dict[str, int] = field(default_factory=dict)  # why frames were left out → how many

    def __len__(self) -> int:
        return len(self.receive_ns)

    @property
    def paths(self) -> list[Path]:
        return [bag_frame_path(self.bag, self.topic, ns) for ns in self.receive_ns.tolist()]

    @property
    def seconds(self) -> np.ndarray:
        """Stamps in seconds since the first kept frame (float64)."""
        if len(self.stamp_ns) == 0:
            return np.zeros(0)
        return (self.stamp_ns - self.stamp_ns[0]).astype(np.float64) / 1e9

    def describe(self) -> str:
        parts = [f"{len(self)} frames of {self.topic} ({short_type(self.image_type)}) in {self.bag}"]
        if self.position_topic is not None:
            kind = "local east/north metres" if self.position_type == NAVSATFIX else "metres as recorded"
            parts.append(f"positions from {self.position_topic} ({short_type(self.position_type)}, {kind})")
        else:
            parts.append("no positions")
        if self.dropped:
            parts.append("left out: " + ", ".join(f"{count} {why}" for why, count in self.dropped.items()))
        return "; ".join(parts)


def short_type(msgtype: str | None) -> str:
    return (msgtype or "?").replace("/msg/", "/")


def _topic_types(reader) -> dict[str, tuple[str | None, int]]:
    return {name: (info.msgtype, int(info.msgcount)) for name, info in reader.topics.items()}


def _listing(topics: dict[str, tuple[str | None, int]], types: tuple[str, ...] | None = None) -> str:
    chosen = [f"{name} ({short_type(msgtype)})" for name, (msgtype, _) in sorted(topics.items())
              if types is None or msgtype in types]
    return ", ".join(chosen) if chosen else "none"


def _choose_image_topic(bag: Path, topics: dict[str, tuple[str | None, int]], topic: str | None) -> tuple[str, str]:
    if topic is None:
        found = [name for name, (msgtype, _) in sorted(topics.items()) if msgtype in IMAGE_TYPES]
        if not found:
            raise TscmError(f"{bag}: no image topic (sensor_msgs/Image or CompressedImage); topics: {_listing(topics)}")
        if len(found) > 1:
            raise TscmError(f"{bag}: several image topics ({_listing(topics, IMAGE_TYPES)}); choose one with --topic")
        topic = found[0]
    if topic not in topics:
        raise TscmError(f"{bag}: no topic {topic!r}; image topics: {_listing(topics, IMAGE_TYPES)}")
    msgtype, count = topics[topic]
    if msgtype not in IMAGE_TYPES:
        raise TscmError(f"{bag}: topic {topic} carries {short_type(msgtype)}, not images "
                        f"(expected sensor_msgs/Image or CompressedImage); image topics: {_listing(topics, IMAGE_TYPES)}")
    if count == 0:
        raise TscmError(f"{bag}: topic {topic} holds no messages")
    return topic, msgtype


def _choose_position_topic(bag: Path, topics: dict[str, tuple[str | None, int]],
                           topic: str | None) -> tuple[str, str] | None:
    if topic is not None and topic.lower() == NO_POSITIONS:
        return None
    if topic is None:
        for msgtype in POSITION_TYPES:
            found = [name for name, (kind, _) in sorted(topics.items()) if kind == msgtype]
            if len(found) == 1:
                return found[0], msgtype
            if len(found) > 1:
                raise TscmError(f"{bag}: several {short_type(msgtype)} topics ({', '.join(found)}); choose one with "
                                f"--position-topic (or --position-topic none)")
        return None
    if topic not in topics:
        raise TscmError(f"{bag}: no topic {topic!r}; position topics: {_listing(topics, POSITION_TYPES)}")
    msgtype, count = topics[topic]
    if msgtype not in POSITION_TYPES:
        raise TscmError(f"{bag}: topic {topic} carries {short_type(msgtype)}; expected sensor_msgs/NavSatFix, "
                        "nav_msgs/Odometry or geometry_msgs/PoseStamped")
    if count == 0:
        raise TscmError(f"{bag}: position topic {topic} holds no messages")
    return topic, msgtype


def _stamp_ns(message: Any, receive_ns: int) -> int:
    stamp = message.header.stamp
    value = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    return value if value != 0 else int(receive_ns)


# ---- positions ------------------------------------------------------------------------------
def local_metres(latitude, longitude, origin: tuple[float, float]) -> np.ndarray:
    """N×2 (east, north) metres of WGS-84 degrees on the plane tangent at `origin` (latitude, longitude).

    East = N(φ0)·cos φ0·Δλ, north = M(φ0)·Δφ with the ellipsoid's radii of curvature at the origin:
    good to well under 0.1 % within ~10 km of it, which is what a local map needs.
    """
    lat0 = np.radians(origin[0])
    sin2 = np.sin(lat0) ** 2
    prime_vertical = _SEMI_MAJOR_M / np.sqrt(1 - _ECCENTRICITY2 * sin2)
    meridional = _SEMI_MAJOR_M * (1 - _ECCENTRICITY2) / (1 - _ECCENTRICITY2 * sin2) ** 1.5
    dlat = np.radians(np.asarray(latitude, dtype=np.float64) - origin[0])
    dlon = np.radians(np.asarray(longitude, dtype=np.float64) - origin[1])
    dlon = (dlon + np.pi) % (2 * np.pi) - np.pi  # across the antimeridian
    return np.stack([prime_vertical * np.cos(lat0) * dlon, meridional * dlat], axis=1)


@dataclass
class _Positions:
    stamp_ns: np.ndarray
    xy: np.ndarray
    origin: tuple[float, float] | None


def _read_positions(reader, bag: Path, topic: str, msgtype: str,
                    origin: tuple[float, float] | None) -> _Positions:
    stamps, values = [], []
    for receive_ns, message in read_messages(reader, bag, topic):
        if msgtype == NAVSATFIX:
            latitude, longitude = float(message.latitude), float(message.longitude)
            if int(message.status.status) < 0 or not (np.isfinite(latitude) and np.isfinite(longitude)):
                continue  # no fix
            if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
                raise TscmError(f"{bag}: {topic} has latitude {latitude:g}, longitude {longitude:g}; "
                                "expected degrees (−90..90, −180..180)")
            values.append((latitude, longitude))
        elif msgtype == ODOMETRY:
            position = message.pose.pose.position
            values.append((float(position.x), float(position.y)))
        else:
            position = message.pose.position
            values.append((float(position.x), float(position.y)))
        stamps.append(_stamp_ns(message, receive_ns))
    if not values:
        raise TscmError(f"{bag}: position topic {topic} holds no usable position (every NavSatFix without a fix?)")
    stamp_ns = np.asarray(stamps, dtype=np.int64)
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(stamp_ns, kind="stable")
    stamp_ns, array = stamp_ns[order], array[order]
    if msgtype == NAVSATFIX:
        origin = origin if origin is not None else (float(array[0, 0]), float(array[0, 1]))
        array = local_metres(array[:, 0], array[:, 1], origin)
    elif not np.isfinite(array).all():
        keep = np.isfinite(array).all(axis=1)
        stamp_ns, array = stamp_ns[keep], array[keep]
    # One value per stamp (the first), so interpolation is well defined.
    stamp_ns, first = np.unique(stamp_ns, return_index=True)
    return _Positions(stamp_ns, array[first], origin if msgtype == NAVSATFIX else None)


def _interpolate(positions: _Positions, stamp_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xy at each stamp, outside-the-stream mask, in-a-gap mask)."""
    known = positions.stamp_ns
    outside = (stamp_ns < known[0]) | (stamp_ns > known[-1])
    after = np.clip(np.searchsorted(known, stamp_ns, side="left"), 1, max(len(known) - 1, 1))
    if len(known) > 1:
        gap = (known[after] - known[after - 1]) > MAX_POSITION_GAP_S * 1e9
        exact = known[np.minimum(np.searchsorted(known, stamp_ns), len(known) - 1)] == stamp_ns
        gap &= ~exact & ~outside
    else:
        gap = np.zeros(len(stamp_ns), dtype=bool)
    # Relative seconds keep float64 exact enough at epoch stamps.
    base = known[0]
    t = (stamp_ns - base).astype(np.float64)
    k = (known - base).astype(np.float64)
    xy = np.stack([np.interp(t, k, positions.xy[:, 0]), np.interp(t, k, positions.xy[:, 1])], axis=1)
    return xy, outside, gap


# ---- frames ---------------------------------------------------------------------------------
def _subsample(stamp_ns: np.ndarray, xy: np.ndarray | None, every: Spacing | None, bag: Path) -> np.ndarray:
    if every is None or len(stamp_ns) == 0:
        return np.arange(len(stamp_ns))
    if every.unit == "m" and xy is None:
        raise TscmError(f"{bag}: --every {every} needs positions, and the bag has no position topic in use; "
                        "use a time (e.g. --every 0.5s) or name --position-topic")
    kept = [0]
    for i in range(1, len(stamp_ns)):
        last = kept[-1]
        if every.unit == "s":
            far = (stamp_ns[i] - stamp_ns[last]) >= every.value * 1e9
        else:
            far = float(np.hypot(*(xy[i] - xy[last]))) >= every.value
        if far:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def read_bag_traversal(bag: str | os.PathLike, topic: str | None = None, position_topic: str | None = None,
                       every: str | Spacing | None = None,
                       origin: tuple[float, float] | None = None) -> BagTraversal:
    """The frames of one image topic of `bag` (module doc), in stamp order.

    `origin` fixes the local plane of NavSatFix positions (default: the bag's first fix), so two
    traversals of one place share coordinates.
    """
    path = Path(bag)
    spacing = every if isinstance(every, Spacing) or every is None else Spacing.parse(every)
    reader = open_bag(path)
    try:
        topics = _topic_types(reader)
        topic, image_type = _choose_image_topic(path, topics, topic)
        chosen = _choose_position_topic(path, topics, position_topic)
        receive, stamps = [], []
        for receive_ns, message in read_messages(reader, path, topic):
            receive.append(receive_ns)
            stamps.append(_stamp_ns(message, receive_ns))
        positions = None
        if chosen is not None:
            positions = _read_positions(reader, path, chosen[0], chosen[1], origin)
    finally:
        reader.close()
    if not receive:
        raise TscmError(f"{path}: topic {topic} holds no messages")
    receive_ns = np.asarray(receive, dtype=np.int64)
    stamp_ns = np.asarray(stamps, dtype=np.int64)
    dropped: dict[str, int] = {}
    # One frame per receive time (what finds a message again), then stamp order.
    receive_ns, first = np.unique(receive_ns, return_index=True)
    if len(first) < len(stamps):
        dropped["with a repeated receive time"] = len(stamps) - len(first)
    stamp_ns = stamp_ns[first]
    order = np.argsort(stamp_ns, kind="stable")
    receive_ns, stamp_ns = receive_ns[order], stamp_ns[order]
    xy = None
    if positions is not None:
        xy, outside, gap = _interpolate(positions, stamp_ns)
        keep = ~(outside | gap)
        if outside.any():
            dropped["outside the position stream"] = int(outside.sum())
        if gap.any():
            dropped[f"in a position gap over {MAX_POSITION_GAP_S:g} s"] = int(gap.sum())
        if not keep.any():
            raise TscmError(f"{path}: no frame of {topic} lies within the position stream of {chosen[0]} "
                            "(compare their stamps), so none has a position; --position-topic none reads frames only")
        receive_ns, stamp_ns, xy = receive_ns[keep], stamp_ns[keep], xy[keep]
    kept = _subsample(stamp_ns, xy, spacing, path)
    if len(kept) < len(stamp_ns):
        dropped[f"thinned by --every {spacing}"] = len(stamp_ns) - len(kept)
    return BagTraversal(
        bag=path.resolve(), topic=topic, image_type=image_type, receive_ns=receive_ns[kept], stamp_ns=stamp_ns[kept],
        xy=None if xy is None else xy[kept], position_topic=None if chosen is None else chosen[0],
        position_type=None if chosen is None else chosen[1],
        origin=None if positions is None else positions.origin, messages=len(stamps), dropped=dropped)


def iter_bag_images(traversal: BagTraversal) -> Iterator[tuple[int, Image.Image]]:
    """(position in the traversal, image) of every kept frame, in stamp order, in one pass over the bag."""
    wanted = {int(ns): i for i, ns in enumerate(traversal.receive_ns.tolist())}
    if not wanted:
        return
    pending: dict[int, Image.Image] = {}
    next_index = 0
    reader = open_bag(traversal.bag)
    try:
        for receive_ns, message in read_messages(reader, traversal.bag, traversal.topic,
                                             start=int(traversal.receive_ns.min()),
                                             stop=int(traversal.receive_ns.max()) + 1):
            index = wanted.pop(receive_ns, None)
            if index is None:
                continue
            where = str(bag_frame_path(traversal.bag, traversal.topic, receive_ns))
            pending[index] = decode_image(message, traversal.image_type, where)
            # Stamp order may differ from receive order: hold the few early arrivals.
            while next_index in pending:
                yield next_index, pending.pop(next_index)
                next_index += 1
    finally:
        reader.close()
    if wanted:
        raise TscmError(f"{traversal.bag}: {len(wanted)} frame(s) of {traversal.topic} vanished while reading; "
                        "was the bag changed?")


# ---- data sets ------------------------------------------------------------------------------
def read_bag_placeset(bag: str | os.PathLike, selection: BagSelection | None = None,
                      split: str | None = None) -> PlaceSet:
    """A PlaceSet of the frames of `bag` (the database) and of `selection.query_bag` (the queries; none
    without it: a map).

    Positions are metres when both traversals have them (NavSatFix of the query bag projected on
    the database bag's plane; odometry and poses compared as recorded, so they must share a frame),
    else frame numbers along the traversal (frames of one bag only). Times are stamps in seconds.
    """
    selection = selection or BagSelection()
    database = read_bag_traversal(bag, selection.topic, selection.position_topic, selection.every)
    queries = None
    if selection.query_bag is not None:
        queries = read_bag_traversal(selection.query_bag, selection.topic, selection.position_topic,
                                     selection.every, origin=database.origin)
        if (database.xy is None) or (queries.xy is None):
            missing = database.bag if database.xy is None else queries.bag
            raise TscmError(f"{missing}: a database bag and a query bag are compared by position, and this bag has "
                            "none in use; record NavSatFix, Odometry or PoseStamped and name it with --position-topic")
        if database.position_type != queries.position_type and NAVSATFIX in (database.position_type, queries.position_type):
            raise TscmError(f"{queries.bag}: positions from {short_type(queries.position_type)} cannot be compared with the "
                            f"database bag's {short_type(database.position_type)}; use the same kind in both")
    name = Path(bag).name
    if database.xy is not None:
        db_xy, unit = database.xy, "m"
        query_xy = np.zeros((0, 2)) if queries is None else queries.xy
    else:
        db_xy, unit = np.arange(len(database), dtype=np.float64), "frame"
        query_xy = np.zeros(0)
    return PlaceSet(
        name=name if queries is None else f"{name} vs {Path(selection.query_bag).name}",
        split=split or "all",
        db_paths=database.paths,
        query_paths=[] if queries is None else queries.paths,
        db_xy=db_xy,
        query_xy=query_xy,
        unit=unit,
        db_time=database.stamp_ns.astype(np.float64) / 1e9,
        query_time=None if queries is None else queries.stamp_ns.astype(np.float64) / 1e9,
    )
