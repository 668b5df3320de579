"""Write a ROS 2 MCAP bag that replays a robot driving one stretch of the Nordland route twice: the summer
frames, then the winter frames of the same places, as `sensor_msgs/CompressedImage` (PNG) one second apart,
with `nav_msgs/Odometry` positions. It is the input of README's "Robot logs" walk-through.

    python examples/nordland_bag.py PATH/nordland nordland_loop --first 2301 --last 2700

This copy of Nordland carries no GPS: the odometry lays frame k at x = 100 m × (k − first) on a straight
line (frames are 100–300 m apart on the real route), the winter pass 5 m beside the summer one, so the
trajectory picture shows both passes. Needs `pip install 'tscm[ros]'`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

START_NS = 1_700_000_000 * 10**9
PERIOD_NS = 10**9
METRES_PER_FRAME = 100.0
SIDE_STEP_M = 5.0


def frames_of(root: Path, first: int, last: int) -> list[tuple[Path, float, float]]:
    """(PNG, x, y) of both passes in driving order: summer first..last, then winter first..last."""
    passes = []
    for season, y in (("summer", 0.0), ("winter", SIDE_STEP_M)):
        for k in range(first, last + 1):
            path = root / season / f"images-{10 * k:05d}.png"
            if not path.is_file():
                raise SystemExit(f"{path}: not found; expected a Nordland folder with summer/ and winter/ frames")
            passes.append((path, METRES_PER_FRAME * (k - first), y))
    return passes


def write_bag(out: Path, frames: list[tuple[Path, float, float]]) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    types = store.types

    def header(stamp_ns: int, frame_id: str):
        stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def odometry(stamp_ns: int, x: float, y: float):
        point = types["geometry_msgs/msg/Point"](x=x, y=y, z=0.0)
        orientation = types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)
        pose = types["geometry_msgs/msg/PoseWithCovariance"](
            pose=types["geometry_msgs/msg/Pose"](position=point, orientation=orientation), covariance=np.zeros(36))
        zero = types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
        twist = types["geometry_msgs/msg/TwistWithCovariance"](
            twist=types["geometry_msgs/msg/Twist"](linear=zero, angular=zero), covariance=np.zeros(36))
        return types["nav_msgs/msg/Odometry"](header=header(stamp_ns, "odom"), child_frame_id="base_link",
                                              pose=pose, twist=twist)

    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        camera = writer.add_connection("/camera/image/compressed", "sensor_msgs/msg/CompressedImage",
                                       typestore=store)
        odom = writer.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=store)
        for i, (path, x, y) in enumerate(frames):
            stamp = START_NS + i * PERIOD_NS
            image = types["sensor_msgs/msg/CompressedImage"](
                header=header(stamp, "camera"), format="png", data=np.frombuffer(path.read_bytes(), dtype=np.uint8))
            writer.write(odom, stamp, store.serialize_cdr(odometry(stamp, x, y), "nav_msgs/msg/Odometry"))
            writer.write(camera, stamp, store.serialize_cdr(image, "sensor_msgs/msg/CompressedImage"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nordland", type=Path, help="the Nordland folder (summer/, winter/)")
    parser.add_argument("out", type=Path, help="the bag folder to create (must not exist)")
    parser.add_argument("--first", type=int, default=2301, help="first frame k (default: the test section's)")
    parser.add_argument("--last", type=int, default=2700, help="last frame k")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; give a new folder for the bag")
    if not 1 <= args.first <= args.last:
        raise SystemExit(f"--first {args.first} --last {args.last}: expected 1 ≤ first ≤ last")
    frames = frames_of(args.nordland, args.first, args.last)
    write_bag(args.out, frames)
    print(f"wrote {args.out}: {len(frames)} frames on /camera/image/compressed, odometry on /odom")


if __name__ == "__main__":
    main()
