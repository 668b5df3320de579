"""Writers of small ROS bags for the tests, with rosbags' own writers: ROS 1 `.bag`, ROS 2 sqlite3 and
MCAP (pytest does not collect this module)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

FORMATS = ("ros1", "sqlite3", "mcap")
ORIGIN = (59.9139, 10.7522)  # latitude, longitude of the test traversals' first fix
METRES_PER_DEGREE = 111_320.0  # about, for laying out test routes


@dataclass
class Frame:
    """One camera message: pixels (H×W×3 uint8, or H×W uint8/uint16 for mono), its header stamp (ns)."""

    pixels: np.ndarray
    stamp_ns: int
    encoding: str = "rgb8"  # or bgr8, rgba8, bgra8, mono8, mono16, or "jpeg"/"png" for CompressedImage
    receive_ns: int | None = None  # default: the stamp


@dataclass
class BagContent:
    frames: list[Frame] = field(default_factory=list)
    image_topic: str = "/camera/image"
    fixes: list[tuple[int, float, float]] = field(default_factory=list)  # (stamp ns, latitude, longitude)
    fix_topic: str = "/gps/fix"
    odometry: list[tuple[int, float, float]] = field(default_factory=list)  # (stamp ns, x, y)
    odometry_topic: str = "/odom"
    # Extra topics as (topic, message type) with no messages, e.g. to test an empty topic.
    empty_topics: list[tuple[str, str]] = field(default_factory=list)
    extra_frames: dict[str, list[Frame]] = field(default_factory=dict)  # more image topics


def distinct_images(count: int, seed: int = 0, size: tuple[int, int] = (24, 32)) -> list[np.ndarray]:
    """`count` distinct smooth-ish random RGB images (H×W×3 uint8)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (size[0] // 4, size[1] // 4, 3)).astype(np.uint8)
        images.append(np.asarray(Image.fromarray(coarse).resize((size[1], size[0]), Image.BILINEAR)))
    return images


def loop_route(count: int, revisit: int, seed: int = 0, start_ns: int = 1_700_000_000 * 10**9,
               period_ns: int = 500_000_000, spacing_m: float = 20.0) -> BagContent:
    """A robot drives `count - revisit` distinct places along a line, then drives the start of the line
    again 5 m beside it, past the first `revisit` places, seeing them again (identical images): the
    loop closures a test expects.

    Frames every `period_ns`; fixes and odometry at every frame stamp and half-way between.
    """
    images = distinct_images(count - revisit, seed)
    frames, places = [], []
    for i in range(count):
        place = i if i < count - revisit else i - (count - revisit)
        places.append(place)
        frames.append(Frame(images[place], start_ns + i * period_ns))
    content = BagContent(frames=frames)
    for i in range(2 * count - 1):
        stamp = start_ns + i * period_ns // 2
        where = np.interp(i / 2, np.arange(count), [p * spacing_m for p in places])
        north = 0.0 if i / 2 < count - revisit else 5.0  # the way back runs 5 m beside the way out
        content.fixes.append((stamp, ORIGIN[0] + north / METRES_PER_DEGREE,
                              ORIGIN[1] + where / (METRES_PER_DEGREE * np.cos(np.radians(ORIGIN[0])))))
        content.odometry.append((stamp, float(where), north))
    return content


def write_bag(path: Path, content: BagContent, fmt: str) -> Path:
    """Write `content` as a ROS 1 bag (`fmt` "ros1", path ending .bag) or a ROS 2 bag folder ("sqlite3",
    "mcap"); returns the path to give tscm."""
    from rosbags.typesys import Stores, get_typestore

    if fmt not in FORMATS:
        raise ValueError(fmt)
    ros1 = fmt == "ros1"
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    serialize = store.serialize_ros1 if ros1 else store.serialize_cdr
    types = store.types
    messages: list[tuple[str, str, int, object]] = []  # (topic, type, receive ns, message)

    def header(stamp_ns: int, frame_id: str):
        stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        if ros1:
            return types["std_msgs/msg/Header"](seq=0, stamp=stamp, frame_id=frame_id)
        return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def image_message(frame: Frame):
        if frame.encoding in ("jpeg", "png"):
            buffer = io.BytesIO()
            Image.fromarray(frame.pixels).save(buffer, format=frame.encoding.upper())
            return "sensor_msgs/msg/CompressedImage", types["sensor_msgs/msg/CompressedImage"](
                header=header(frame.stamp_ns, "camera"), format=frame.encoding,
                data=np.frombuffer(buffer.getvalue(), dtype=np.uint8))
        pixels = encode_pixels(frame.pixels, frame.encoding)
        height, width = pixels.shape[:2]
        raw = np.ascontiguousarray(pixels).view(np.uint8).reshape(-1)
        return "sensor_msgs/msg/Image", types["sensor_msgs/msg/Image"](
            header=header(frame.stamp_ns, "camera"), height=height, width=width, encoding=frame.encoding,
            is_bigendian=0, step=raw.size // height, data=raw)

    image_topics = {content.image_topic: content.frames, **content.extra_frames}
    for topic, frames in image_topics.items():
        for frame in frames:
            msgtype, message = image_message(frame)
            messages.append((topic, msgtype, frame.receive_ns or frame.stamp_ns, message))
    for stamp, latitude, longitude in content.fixes:
        status = types["sensor_msgs/msg/NavSatStatus"](status=0, service=1)
        message = types["sensor_msgs/msg/NavSatFix"](
            header=header(stamp, "gps"), status=status, latitude=latitude, longitude=longitude, altitude=10.0,
            position_covariance=np.zeros(9), position_covariance_type=0)
        messages.append((content.fix_topic, "sensor_msgs/msg/NavSatFix", stamp, message))
    for stamp, x, y in content.odometry:
        point = types["geometry_msgs/msg/Point"](x=x, y=y, z=0.0)
        orientation = types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)
        pose = types["geometry_msgs/msg/PoseWithCovariance"](
            pose=types["geometry_msgs/msg/Pose"](position=point, orientation=orientation), covariance=np.zeros(36))
        zero = types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
        twist = types["geometry_msgs/msg/TwistWithCovariance"](
            twist=types["geometry_msgs/msg/Twist"](linear=zero, angular=zero), covariance=np.zeros(36))
        message = types["nav_msgs/msg/Odometry"](header=header(stamp, "odom"), child_frame_id="base_link",
                                                 pose=pose, twist=twist)
        messages.append((content.odometry_topic, "nav_msgs/msg/Odometry", stamp, message))
    messages.sort(key=lambda item: item[2])

    topics = {}
    for topic, msgtype, _, _ in messages:
        topics.setdefault(topic, msgtype)
    for topic, msgtype in content.empty_topics:
        topics.setdefault(topic, msgtype)
    if ros1:
        from rosbags.rosbag1 import Writer

        writer = Writer(path)
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.SQLITE3 if fmt == "sqlite3" else StoragePlugin.MCAP
        writer = Writer(path, version=9, storage_plugin=plugin)
    with writer:
        connections = {topic: writer.add_connection(topic, msgtype, typestore=store) for topic, msgtype in topics.items()}
        for topic, msgtype, receive_ns, message in messages:
            writer.write(connections[topic], receive_ns, serialize(message, msgtype))
    return path


def encode_pixels(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """The array a camera driver would send for RGB `pixels` (or grey H×W for mono) in `encoding`."""
    if encoding == "rgb8":
        return pixels
    if encoding == "bgr8":
        return pixels[:, :, ::-1]
    if encoding == "rgba8":
        return np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 255, np.uint8)], axis=2)
    if encoding == "bgra8":
        return np.concatenate([pixels[:, :, ::-1], np.full(pixels.shape[:2] + (1,), 255, np.uint8)], axis=2)
    if encoding in ("mono8", "mono16"):
        return pixels
    return pixels  # any other encoding name: written as given (a test of unknown encodings)


def bag_name(fmt: str) -> str:
    return "run.bag" if fmt == "ros1" else f"run_{fmt}"


def write_formats(folder: Path, content: BagContent, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """`content` written in each format under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return {fmt: write_bag(folder / bag_name(fmt), content, fmt) for fmt in formats}
