"""Assertions and writers shared by the reliability suite (its fixtures live in conftest.py).

Every case runs a command through `tscm.cli.main` and checks what a careless or hostile user sees:
the exit code (2: bad input, 1: check-data found problems), one line on stderr that names the
culprit (file, field or value) and what was expected, no traceback anywhere, and outputs written
before the failing command left byte for byte as they were.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tscm import cli

# Settings that make a training run take a second or two on the tiny city.
TINY_TRAINING = (
    "train.max_queries_per_epoch=4",
    "train.batch_size=2",
    "train.epochs=1",
    "train.patience=0",
    "train.progress=false",
    "train.threads=1",
    "mining.num_negatives=1",
    "mining.num_random=8",
    "mining.positive_rule=heading",
    "mining.batch_size=36",
    "eval.batch_size=36",
    "run.tensorboard=false",
)


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def tscm(capsys, *argv) -> Outcome:
    """Run `tscm ARGV...` in this process and capture what it printed."""
    capsys.readouterr()  # drop what earlier steps printed
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def error_line(outcome: Outcome, command: str) -> str:
    """The one `tscm COMMAND: error: ...` line of stderr (asserting there is exactly one, and last)."""
    prefix = f"tscm {command}: error: "
    lines = outcome.err.rstrip("\n").splitlines()
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1, f"expected one error line, stderr was:\n{outcome.err}"
    assert lines and lines[-1] == errors[0], f"the error message spans several lines:\n{outcome.err}"
    return errors[0][len(prefix):]


def assert_no_traceback(outcome: Outcome) -> None:
    for stream in (outcome.out, outcome.err):
        assert "Traceback" not in stream, stream
        assert "Original Traceback" not in stream, stream


def assert_refused(outcome: Outcome, command: str, *named: str, code: int = 2, absent: Sequence[str] = ()) -> str:
    """A clean refusal: exit `code`, one error line naming every string of `named` (case-insensitive),
    none of `absent`, and no traceback. Returns the message."""
    assert_no_traceback(outcome)
    assert outcome.code == code, f"exit {outcome.code}, expected {code}\nstdout:\n{outcome.out}\nstderr:\n{outcome.err}"
    message = error_line(outcome, command)
    log = os.environ.get("TSCM_RELIABILITY_LOG")  # collect every message, to read them side by side
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{message}\n")
    for text in named:
        assert str(text).lower() in message.lower(), f"{text!r} not named in: {message}"
    for text in absent:
        assert str(text).lower() not in message.lower(), f"{text!r} should not appear in: {message}"
    return message


def assert_problems(outcome: Outcome, *named: str) -> None:
    """check-data found problems: exit 1, a PROBLEMS result, the culprits named on stdout, no traceback."""
    assert_no_traceback(outcome)
    assert outcome.code == 1, f"exit {outcome.code}\nstdout:\n{outcome.out}\nstderr:\n{outcome.err}"
    assert "result: OK" not in outcome.out and "result: PROBLEMS" in outcome.out, outcome.out
    for text in named:
        assert str(text) in outcome.out, f"{text!r} not in:\n{outcome.out}"


class Snapshot:
    """The bytes of every file below some paths, to show a failed command left them as they were."""

    def __init__(self, *paths: Path) -> None:
        self.paths = [Path(p) for p in paths]
        self.contents = self._read()

    def _read(self) -> dict[Path, bytes]:
        contents = {}
        for path in self.paths:
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
            for file in files:
                contents[file] = file.read_bytes()
        return contents

    def assert_unchanged(self) -> None:
        now = self._read()
        assert sorted(now) == sorted(self.contents), "files appeared or vanished"
        for file, data in self.contents.items():
            assert now[file] == data, f"{file} changed"
        for path in self.paths:  # no temporary file left beside a target
            folder = path.parent
            leftovers = [p.name for p in folder.iterdir() if p.name.startswith(f".{path.name}.") and p.name.endswith(".tmp")]
            assert not leftovers, leftovers


def previous_output(path: Path, data: bytes = b"an earlier output that must survive\n") -> Snapshot:
    """Write `data` at `path` (an output of an earlier command) and snapshot it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Snapshot(path)


class Payload:
    """A pickle that, if ever unpickled, creates `marker` (it must never exist)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))




def training_args(command: str, city: Path, output_dir: Path, name: str, *extra: str) -> list[str]:
    """`COMMAND --set ...` for a tiny run named `name` under `output_dir` on `city`."""
    args = [command, "--set", f"data.path={city}", "--set", f"run.output_dir={output_dir}", "--set", f"run.name={name}"]
    for item in (*TINY_TRAINING, *extra):
        args += ["--set", item]
    return args


def copy_tree(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def white_and_grey_images(folder: Path) -> tuple[Path, Path]:
    """An all-white 8-bit PNG and a 16-bit grey gradient PNG (mode I;16) of the same size."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    white = folder / "white.png"
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(white)
    ramp = np.linspace(0, 40000, 40 * 40).reshape(40, 40).astype(np.uint16)
    wide = folder / "wide16.png"
    Image.fromarray(ramp).save(wide)
    return white, wide


def write_image(path: Path, seed: int = 0, size: int = 24) -> Path:
    """A real JPEG (or PNG by suffix) with random pixels."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_manifest(path: Path, rows: Sequence[Sequence], header: str = "path,east,north,role") -> Path:
    """A CSV manifest: `header`, then one line per row (cells joined by commas)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header] + [",".join(str(cell) for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def image_set(folder: Path, num_db: int = 4, num_queries: int = 2) -> tuple[Path, list[Path], list[Path]]:
    """A metric CSV data set of real images, each query 2 m from a database image: (csv, db, queries)."""
    db = [write_image(folder / "db" / f"{i:03d}.jpg", seed=i) for i in range(num_db)]
    queries = [write_image(folder / "q" / f"{i:03d}.jpg", seed=100 + i) for i in range(num_queries)]
    rows = [(f"db/{p.name}", 500000 + 10 * i, 4000000, "database") for i, p in enumerate(db)]
    rows += [(f"q/{p.name}", 500002 + 10 * i, 4000000, "query") for i, p in enumerate(queries)]
    return write_manifest(folder / "set.csv", rows), db, queries


def damage_image(path: Path, kind: str) -> None:
    """Turn the image at `path` into a bad one of `kind`."""
    from PIL import Image

    if kind == "truncated":
        write_image(path, seed=7, size=96)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("these are not the pixels you are looking for\n", encoding="utf-8")
    elif kind == "folder":
        path.unlink()
        path.mkdir()
    elif kind == "missing":
        path.unlink()
    elif kind == "float-tiff":
        # A float image out of [0, 1]: the bytes are a TIFF whatever the name says.
        Image.fromarray(np.linspace(0, 1000, 24 * 24, dtype=np.float32).reshape(24, 24), mode="F").save(path, format="TIFF")
    elif kind == "tiny":
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(path, format="JPEG")
    else:
        raise ValueError(kind)


BAD_IMAGES = ("truncated", "empty", "text", "folder", "missing", "float-tiff")


# ----- bounded runs in a child process (cases that once took gigabytes or never ended) ---------------

# Address space a case may use beyond what importing tscm, torch and faiss takes: a refusal needs a few
# megabytes; the blow-ups these cases guard against took 1.6 to 2.3 GB.
BOUNDED_HEADROOM = 1 << 30
# Beyond this the case is a hang (a refusal takes seconds even on a busy machine).
BOUNDED_TIMEOUT_S = 600


@functools.lru_cache(maxsize=1)
def _import_address_space() -> int:
    """Bytes of address space a child takes to import the tscm CLI with torch and faiss (VmPeak)."""
    probe = ("import faiss, torch\nfrom tscm import cli\ncli.build_parser()\n"
             "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_child_env(), timeout=BOUNDED_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) * 1024


def _child_env() -> dict[str, str]:
    env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="1")
    src = str(Path(cli.__file__).resolve().parents[1])  # the tscm being tested, whether installed or not
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def tscm_bounded(*argv) -> Outcome:
    """Run `tscm ARGV...` in a child process whose address space is capped at the import's plus
    BOUNDED_HEADROOM (a blow-up fails there, not on this machine), killed after BOUNDED_TIMEOUT_S."""
    if not sys.platform.startswith("linux"):
        import pytest

        pytest.skip("the address-space cap reads /proc and uses RLIMIT_AS (Linux)")
    import resource

    cap = _import_address_space() + BOUNDED_HEADROOM

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        done = subprocess.run([sys.executable, "-m", "tscm", *map(str, argv)], capture_output=True, text=True,
                              env=_child_env(), timeout=BOUNDED_TIMEOUT_S, preexec_fn=limit, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"tscm {' '.join(map(str, argv))} ran past {BOUNDED_TIMEOUT_S} s (a hang)") from None
    return Outcome(done.returncode, done.stdout, done.stderr)


def make_fifo(path: Path) -> Path:
    """A named pipe at `path` (replacing a file there): reading it blocks until a writer comes."""
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return path


@contextlib.contextmanager
def fifo_released_after(fifo: Path, seconds: float = BOUNDED_TIMEOUT_S):
    """While the block runs, a command that opened `fifo` and waits on it gets end-of-file after `seconds`:
    a regression then fails the test instead of hanging the suite."""
    done = threading.Event()

    def release() -> None:
        if done.wait(seconds):
            return
        while not done.wait(0.5):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while nobody reads
            except OSError:
                pass

    helper = threading.Thread(target=release, daemon=True)
    helper.start()
    try:
        yield
    finally:
        done.set()
        helper.join()
