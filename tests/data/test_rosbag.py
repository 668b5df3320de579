"""ROS bags as data sets: bags written by rosbags' own writers (ROS 1, ROS 2 sqlite3, MCAP) read back
through the reader, the image loader and the commands; bad bags give one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from helpers.bag_files import FORMATS, BagContent, Frame, loop_route, distinct_images, write_bag, write_formats  # noqa: E402
from helpers.model_files import write_checkpoint  # noqa: E402
from tscm import cli  # noqa: E402
from tscm.data.formats import BagSelection, load_placeset  # noqa: E402
from tscm.data.formats.bag_frames import (  # noqa: E402
    bag_frame_path, is_bag_frame_path, parse_bag_frame_path, read_bag_frame, stamp_text,
)
from tscm.data.formats.rosbag import iter_bag_images, local_metres, read_bag_traversal  # noqa: E402
from tscm.data.images import load_rgb  # noqa: E402
from tscm.deploy.retrieval.index import PlaceIndex  # noqa: E402
from tscm.errors import TscmError  # noqa: E402


def tscm(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def route_bags(tmp_path_factory) -> dict[str, Path]:
    """A 10-frame traversal (7 places, the first 3 seen again) with NavSatFix and odometry, in every format."""
    return write_formats(tmp_path_factory.mktemp("bags"), loop_route(10, 3))


def test_every_format_gives_the_same_frames_stamps_and_positions(route_bags):
    content = loop_route(10, 3)
    read = {fmt: read_bag_traversal(bag) for fmt, bag in route_bags.items()}
    reference = read["ros1"]
    assert reference.position_topic == "/gps/fix" and reference.position_type.endswith("NavSatFix")
    assert reference.stamp_ns.tolist() == [frame.stamp_ns for frame in content.frames]
    for fmt in FORMATS:
        assert read[fmt].stamp_ns.tolist() == reference.stamp_ns.tolist()
        np.testing.assert_array_equal(read[fmt].xy, reference.xy)
    # NavSatFix projected to local metres agrees with the odometry the route was laid out in (the
    # writer converts metres to degrees with a rounder Earth than the reader's WGS-84, hence 1 %).
    odometry = read_bag_traversal(route_bags["mcap"], position_topic="/odom")
    np.testing.assert_allclose(reference.xy, odometry.xy, rtol=0.01, atol=0.05)
    assert reference.xy[0].tolist() == [0.0, 0.0]  # the plane's origin is the first fix


def test_frames_decode_in_one_pass_and_by_virtual_path_to_the_written_pixels(route_bags):
    content = loop_route(10, 3)
    for fmt, bag in route_bags.items():
        traversal = read_bag_traversal(bag)
        streamed = dict(iter_bag_images(traversal))
        assert sorted(streamed) == list(range(10))
        for index, path in enumerate(traversal.paths):
            assert is_bag_frame_path(path)
            expected = content.frames[index].pixels
            np.testing.assert_array_equal(np.asarray(load_rgb(path)), expected, err_msg=f"{fmt} frame {index}")
            np.testing.assert_array_equal(np.asarray(streamed[index]), expected)


def test_every_encoding_decodes_like_the_image_loader_scales_files(tmp_path):
    rgb = distinct_images(1, seed=3, size=(16, 20))[0]
    grey8 = rgb[:, :, 1]
    grey16 = (grey8.astype(np.uint16) * 257 + np.arange(20, dtype=np.uint16)[None, :] * 3)
    stamp = 1_600_000_000 * 10**9
    topics = {f"/cam/{encoding}": [Frame(rgb, stamp, encoding)] for encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "png", "jpeg")}
    topics["/cam/mono8"] = [Frame(grey8, stamp, "mono8")]
    topics["/cam/mono16"] = [Frame(grey16, stamp, "mono16")]
    for fmt in ("ros1", "mcap"):
        bag = write_bag(tmp_path / ("enc.bag" if fmt == "ros1" else "enc"), BagContent(extra_frames=topics, image_topic="/unused"), fmt)
        for topic in topics:
            decoded = np.asarray(load_rgb(bag_frame_path(bag, topic, stamp)))
            assert decoded.shape == (16, 20, 3) and decoded.dtype == np.uint8, topic
            encoding = topic.rsplit("/", 1)[1]
            if encoding == "mono8":
                np.testing.assert_array_equal(decoded, np.repeat(grey8[:, :, None], 3, axis=2))
            elif encoding == "mono16":  # full 16-bit range onto 8 bits, as for 16-bit PNG files
                expected = np.round(grey16 / 257.0).astype(np.uint8)
                np.testing.assert_array_equal(decoded, np.repeat(expected[:, :, None], 3, axis=2))
            elif encoding == "jpeg":
                assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() < 12
            else:
                np.testing.assert_array_equal(decoded, rgb, err_msg=f"{fmt} {encoding}")


def test_subsampling_by_time_and_by_distance(route_bags):
    every_second = read_bag_traversal(route_bags["sqlite3"], every="1s")  # frames come every 0.5 s
    assert np.all(np.diff(every_second.stamp_ns) >= 10**9)
    assert len(every_second) == 5 and every_second.dropped["thinned by --every 1s"] == 5
    far = read_bag_traversal(route_bags["sqlite3"], position_topic="/odom", every="30m")  # places 20 m apart
    steps = np.hypot(*np.diff(far.xy, axis=0).T)
    assert np.all(steps >= 30) and len(far) < 10
    with pytest.raises(TscmError, match="needs positions"):
        read_bag_traversal(route_bags["sqlite3"], position_topic="none", every="2m")
    with pytest.raises(TscmError, match="--every '2 km'"):
        read_bag_traversal(route_bags["sqlite3"], every="2 km")


def test_positions_are_interpolated_and_frames_outside_the_stream_dropped(tmp_path):
    start = 1_700_000_000 * 10**9
    images = distinct_images(6)
    content = BagContent(frames=[Frame(images[i], start + i * 10**9) for i in range(6)])
    # Odometry from t = 1 s to 4 s, moving 10 m per second along x: frames 0 and 5 lie outside it.
    content.odometry = [(start + 10**9 + k * 500_000_000, 5.0 * k, 0.0) for k in range(7)]
    bag = write_bag(tmp_path / "odo.bag", content, "ros1")
    traversal = read_bag_traversal(bag)
    assert traversal.position_topic == "/odom"
    assert traversal.stamp_ns.tolist() == [start + i * 10**9 for i in range(1, 5)]
    np.testing.assert_allclose(traversal.xy[:, 0], [0.0, 10.0, 20.0, 30.0])
    assert traversal.dropped == {"outside the position stream": 2}


def test_local_plane_distances_match_the_known_length_of_a_degree():
    # At 60° N a degree of latitude is 111,412 m and a degree of longitude 55,800 m (WGS-84 tables).
    east_north = local_metres([60.01, 60.0], [10.0, 10.01], (60.0, 10.0))
    np.testing.assert_allclose(east_north[0], [0.0, 1114.12], atol=0.1)
    np.testing.assert_allclose(east_north[1], [558.00, 0.0], atol=0.1)


def test_virtual_paths_round_trip_and_ordinary_paths_are_not_frames(tmp_path):
    path = bag_frame_path(tmp_path / "a#b.bag", "/cam/image_raw", 1234)
    assert parse_bag_frame_path(path) == ((tmp_path / "a#b.bag").resolve(), "/cam/image_raw", 1234)
    assert not is_bag_frame_path(tmp_path / "photo#1.jpg")
    assert stamp_text(1_700_000_000_250_000_000) == "1700000000.250000000"
    with pytest.raises(TscmError, match="no message on /cam"):
        bag = write_bag(tmp_path / "one.bag", loop_route(3, 0), "ros1")
        read_bag_frame(bag_frame_path(bag, "/camera/image", 5))


def test_a_single_bag_is_a_map_and_two_bags_are_database_and_queries(route_bags):
    single = load_placeset(route_bags["ros1"])
    assert (single.num_db, single.num_queries, single.unit) == (10, 0, "m")
    pair = load_placeset(route_bags["ros1"], bag=BagSelection(query_bag=route_bags["mcap"]))
    assert (pair.num_db, pair.num_queries) == (10, 10)
    np.testing.assert_array_equal(pair.db_xy, pair.query_xy)
    frames_only = load_placeset(route_bags["ros1"], bag=BagSelection(position_topic="none"))
    assert frames_only.unit == "frame" and frames_only.db_xy[:, 0].tolist() == list(range(10))
    with pytest.raises(TscmError, match="apply to ROS bags"):
        load_placeset(route_bags["ros1"].parent, bag=BagSelection(topic="/camera/image"))


def test_commands_take_bags_where_they_take_folders(route_bags, tmp_path, capsys):
    code, out, _ = tscm(capsys, "check-data", route_bags["mcap"], "--topic", "/camera/image")
    assert code == 0 and "database images   10" in out and "result: OK" in out
    code, out, _ = tscm(capsys, "check-data", route_bags["ros1"], "--query-bag", route_bags["sqlite3"], "--every", "1s")
    assert code == 0 and "queries           5" in out and "result: OK" in out
    checkpoint = write_checkpoint(tmp_path / "student", "student-tiny", 0)
    code, out, _ = tscm(capsys, "index", "build", "--checkpoint", checkpoint, "--bag", route_bags["sqlite3"],
                        "--out", tmp_path / "map.idx", "--backend", "flat")
    assert code == 0 and "10 places" in out and "coordinates: yes" in out
    index = PlaceIndex.load(tmp_path / "map.idx")
    assert all(is_bag_frame_path(index.entry(i)["path"]) for i in range(index.count))
    np.testing.assert_allclose(index.entry(4)["xy"], read_bag_traversal(route_bags["sqlite3"]).xy[4])
    # The same frames recorded in another format: each query's top-1 is its own place (R@1 = 100 %).
    json_path = tmp_path / "eval.json"
    code, out, _ = tscm(capsys, "evaluate", route_bags["ros1"], "--query-bag", route_bags["mcap"], "--checkpoint",
                        checkpoint, "--radius", "10", "--json", json_path)
    assert code == 0 and "10 queries, 10 evaluated" in out
    import json

    assert json.loads(json_path.read_text())["recall"]["1"] == pytest.approx(100.0)
    code, _, err = tscm(capsys, "evaluate", route_bags["ros1"], "--checkpoint", checkpoint)
    assert code == 2 and "give the query traversal with --query-bag" in err


def _content_with(**changes) -> BagContent:
    content = loop_route(4, 0)
    for key, value in changes.items():
        setattr(content, key, value)
    return content


@pytest.mark.parametrize("fmt", ["ros1", "mcap"])
def test_bad_bags_give_one_line_errors(tmp_path, capsys, fmt):
    good = write_bag(tmp_path / ("good.bag" if fmt == "ros1" else "good"), _content_with(
        empty_topics=[("/camera/silent", "sensor_msgs/msg/Image")]), fmt)
    unknown = loop_route(4, 0)
    for frame in unknown.frames:
        frame.encoding = "yuv422"
    weird = write_bag(tmp_path / ("weird.bag" if fmt == "ros1" else "weird"), unknown, fmt)
    storage = good if fmt == "ros1" else next(good.glob("*.mcap"))
    truncated = tmp_path / ("cut.bag" if fmt == "ros1" else "cut.mcap")
    truncated.write_bytes(storage.read_bytes()[: storage.stat().st_size * 2 // 3])
    cases = [
        ((good, "--topic", "/camera/missing"), "no topic '/camera/missing'"),
        ((good, "--topic", "/gps/fix"), "carries sensor_msgs/NavSatFix, not images"),
        ((good, "--topic", "/camera/silent"), "holds no messages"),
        ((good, "--topic", "/camera/image", "--position-topic", "/camera/image"), "expected sensor_msgs/NavSatFix"),
        ((weird,), "encoding 'yuv422' is not supported"),
        ((truncated,), str(truncated)),
        ((tmp_path / "nothing.bag",), "no such file"),
    ]
    for argv, expected in cases:
        code, out, err = tscm(capsys, "check-data", *argv)
        if expected.startswith("encoding"):  # pixels are checked when images are opened: a failed check, not an error
            assert code == 1 and expected in out, (argv, out)
            continue
        assert code == 2, (argv, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (argv, err)
