"""A ROS bag's messages and frames: opening a bag, reading a topic's messages, decoding an image message,
and the virtual path that names one frame.

A frame's path is `BAG#TOPIC@RECEIVE_NS` (the bag's absolute path, the topic, the receive time in
nanoseconds, which finds the message again: an indexed seek in all three formats). `tscm.data.images.load_rgb`,
the one image loader, sends such paths to `read_bag_frame`, so every command that reads images from paths
reads bag frames the same way; readers are kept open per thread and per process. Which topics and frames make
a data set is `tscm.data.formats.rosbag`.

Images: `sensor_msgs/Image` (rgb8, bgr8, rgba8, bgra8, mono8, mono16, and their OpenCV aliases 8UC1, 8UC3,
8UC4, 16UC1) and `sensor_msgs/CompressedImage` (jpeg, png).
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tscm.errors import TscmError

BAG_SUFFIXES = (".bag", ".db3", ".mcap")
INSTALL_HINT = "reading ROS bags needs the rosbags package: pip install 'tscm[ros]'"

# name → (channels, bytes per channel, channel order); OpenCV aliases follow cv_bridge (8UC3 is BGR).
RAW_ENCODINGS = {
    "rgb8": (3, 1, "RGB"), "bgr8": (3, 1, "BGR"), "rgba8": (4, 1, "RGB"), "bgra8": (4, 1, "BGR"),
    "mono8": (1, 1, "L"), "mono16": (1, 2, "L"),
    "8uc1": (1, 1, "L"), "8uc3": (3, 1, "BGR"), "8uc4": (4, 1, "BGR"), "16uc1": (1, 2, "L"),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")

_FRAME_PATH = re.compile(r"^(?P<bag>.+)#(?P<topic>/[^#@]*)@(?P<stamp>\d+)$")


# ---- paths ----------------------------------------------------------------------------------
def is_bag_path(path: str | os.PathLike) -> bool:
    """A ROS 1 `.bag`, a ROS 2 `.db3` / `.mcap` storage file, or a ROS 2 bag folder (with metadata.yaml)."""
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix.lower() in BAG_SUFFIXES


def bag_frame_path(bag: str | os.PathLike, topic: str, receive_ns: int) -> Path:
    """The virtual path of the message received at `receive_ns` on `topic` of `bag`."""
    return Path(f"{Path(bag).resolve()}#{topic}@{int(receive_ns)}")


def parse_bag_frame_path(path: str | os.PathLike) -> tuple[Path, str, int] | None:
    """(bag, topic, receive time in ns) of a virtual frame path, None for any other path."""
    text = os.fspath(path)
    if "#" not in text:
        return None
    match = _FRAME_PATH.match(text)
    if match is None:
        return None
    return Path(match["bag"]), match["topic"], int(match["stamp"])


def is_bag_frame_path(path: str | os.PathLike) -> bool:
    return parse_bag_frame_path(path) is not None


def stamp_text(nanoseconds: int) -> str:
    """Exact seconds of an integer nanosecond stamp, e.g. '1700000000.250000000'."""
    value = int(nanoseconds)
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}{value // 1_000_000_000}.{value % 1_000_000_000:09d}"


# ---- opening --------------------------------------------------------------------------------
def _anyreader():
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError:
        raise TscmError(INSTALL_HINT) from None
    return AnyReader, get_typestore(Stores.LATEST)


def open_bag(bag: str | os.PathLike):
    """An opened rosbags AnyReader (close it, or use it in `with`); TscmError for anything unreadable."""
    path = Path(bag)
    if not path.exists():
        raise TscmError(f"{path}: no such bag")
    if not is_bag_path(path):
        raise TscmError(f"{path}: not a ROS bag (expected a .bag, .db3 or .mcap file, or a ROS 2 bag folder "
                        "with metadata.yaml)")
    any_reader, default_types = _anyreader()
    try:
        reader = any_reader([path], default_typestore=default_types)
        reader.open()
    except Exception as error:  # noqa: BLE001 - every failure of a third-party reader on a bad file is "unreadable"
        raise TscmError(f"{path}: unreadable bag ({_reason(error)})") from None
    return reader


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_messages(reader, bag: Path, topic: str, start: int | None = None, stop: int | None = None):
    """(receive ns, message) of `topic`, deserialised; a damaged bag is a TscmError naming it."""
    connections = [c for c in reader.connections if c.topic == topic]
    try:
        for connection, receive_ns, raw in reader.messages(connections, start=start, stop=stop):
            yield int(receive_ns), reader.deserialize(raw, connection.msgtype)
    except TscmError:
        raise
    except Exception as error:  # noqa: BLE001 - truncated chunks, bad compression, bad serialisation
        raise TscmError(f"{bag}: unreadable message on {topic} ({_reason(error)}); is the bag truncated?") from None


# ---- pixels ---------------------------------------------------------------------------------
def decode_image(message: Any, msgtype: str, where: str) -> Image.Image:
    """A PIL image of an Image / CompressedImage message (RGB, L or I;16: tscm.data.images scales it)."""
    if msgtype.endswith("CompressedImage"):
        name = str(message.format).lower()
        if "compresseddepth" in name or not any(kind in name for kind in COMPRESSED_FORMATS):
            raise TscmError(f"{where}: compressed format {message.format!r} is not supported; expected jpeg or png")
        try:
            with Image.open(io.BytesIO(np.asarray(message.data, dtype=np.uint8).tobytes())) as image:
                image.load()
                return image.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise TscmError(f"{where}: unreadable {message.format} image ({error})") from None
    encoding = str(message.encoding)
    if encoding.lower() not in RAW_ENCODINGS:
        raise TscmError(f"{where}: image encoding {encoding!r} is not supported; expected one of "
                        "rgb8, bgr8, rgba8, bgra8, mono8, mono16")
    channels, depth, order = RAW_ENCODINGS[encoding.lower()]
    height, width, step = int(message.height), int(message.width), int(message.step)
    data = np.asarray(message.data, dtype=np.uint8).reshape(-1)
    row_bytes = width * channels * depth
    if height <= 0 or width <= 0:
        raise TscmError(f"{where}: empty image ({width}×{height})")
    if step < row_bytes or data.size < step * height:
        raise TscmError(f"{where}: {encoding} image of {width}×{height} with step {step} needs "
                        f"{max(step, row_bytes) * height} bytes, the message holds {data.size}")
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    if depth == 2:
        values = np.ascontiguousarray(rows).view(">u2" if message.is_bigendian else "<u2").reshape(height, width)
        return Image.fromarray(values.astype(np.uint16))
    pixels = rows.reshape(height, width, channels)
    if channels == 1:
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]), mode="L")
    colour = pixels[:, :, :3] if order == "RGB" else pixels[:, :, 2::-1]
    return Image.fromarray(np.ascontiguousarray(colour), mode="RGB")


class _OpenBags(threading.local):
    """Open readers of the bags this thread reads frames from (a few; a forked worker opens its own)."""

    limit = 4

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.readers: OrderedDict[Path, Any] = OrderedDict()

    def get(self, bag: Path):
        if self.pid != os.getpid():  # inherited over fork: the parent's file handles are not ours to use
            self.pid, self.readers = os.getpid(), OrderedDict()
        reader = self.readers.get(bag)
        if reader is None:
            reader = open_bag(bag)
            self.readers[bag] = reader
            while len(self.readers) > self.limit:
                _, oldest = self.readers.popitem(last=False)
                oldest.close()
        self.readers.move_to_end(bag)
        return reader


_OPEN_BAGS = _OpenBags()


def read_bag_frame(path: str | os.PathLike) -> Image.Image:
    """The image of a virtual frame path `BAG#TOPIC@RECEIVE_NS` (TscmError naming it if it cannot be read)."""
    parsed = parse_bag_frame_path(path)
    if parsed is None:
        raise TscmError(f"{path}: not a bag frame (expected BAG#TOPIC@RECEIVE_NS)")
    bag, topic, receive_ns = parsed
    if not bag.exists():
        raise TscmError(f"{path}: image not found (no bag {bag})")
    reader = _OPEN_BAGS.get(bag)
    msgtypes = {c.msgtype for c in reader.connections if c.topic == topic}
    if not msgtypes:
        raise TscmError(f"{path}: image not found (the bag has no topic {topic})")
    for _, message in read_messages(reader, bag, topic, start=receive_ns, stop=receive_ns + 1):
        return decode_image(message, msgtypes.pop(), str(path))
    raise TscmError(f"{path}: image not found (no message on {topic} received at {stamp_text(receive_ns)} s)")
