"""Command-line options that choose what of a ROS bag is read (shared by `check-data`, `evaluate`,
`index build`, `index calibrate` and `loop-closure`; not a command itself)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_bag_arguments(parser: argparse.ArgumentParser, *, query_bag: bool = False) -> None:
    group = parser.add_argument_group("ROS bags (.bag, .db3, .mcap or a ROS 2 bag folder)")
    group.add_argument("--topic", default=None,
                       help="image topic (sensor_msgs/Image or CompressedImage; default: the bag's only one)")
    group.add_argument("--position-topic", default=None,
                       help="positions: a NavSatFix (to local metres), Odometry or PoseStamped topic, interpolated to "
                            "the frames' stamps (default: the bag's only one of these, NavSatFix first; 'none': frames only)")
    group.add_argument("--every", default=None, metavar="0.5s|2m",
                       help="keep a frame only this long after, or this far from, the last kept one")
    if query_bag:
        group.add_argument("--query-bag", default=None, metavar="BAG",
                           help="a second traversal whose frames are the queries (same topics; ground truth by "
                                "position within the radius)")


def bag_selection(args: argparse.Namespace):
    """The BagSelection the options name, or None when none is given."""
    from tscm.data.formats.rosbag import BagSelection

    query = getattr(args, "query_bag", None)
    selection = BagSelection(topic=args.topic, position_topic=args.position_topic, every=args.every,
                             query_bag=None if query is None else Path(query))
    return None if selection == BagSelection() else selection
