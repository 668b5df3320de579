"""Kill a tscm command with SIGKILL at many points and check what it leaves (used by test_faults.py).

Run as `python kill_driver.py SPEC.json REPORT.json`. The driver imports tscm and torch once, then,
for every trial, restores the old target, forks a worker that runs `tscm.cli.main(argv)` and kills
it with SIGKILL: either after a delay (a random-ish moment of the command) or, exactly, just before
or just after its k-th rename (os.replace, os.rename, tscm.fileio.exchange_paths: where files and
folders change hands). A
forked checker then loads the target with tscm's own loader and says whether it is the old file or
folder, the complete new one, or something else. Forking keeps each trial cheap: the workers do not
import torch again. The driver itself never runs torch code, so forking it is safe.

SPEC: {"argv": [...], "target": path, "old": path of a pristine copy of the old target,
       "check": "index" | "onnx" | "run" | "city", "delays": [seconds...], "points": max exact points,
       "city": {"preset", "old_seed", "new_seed"} for check "city"}
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np


def restore(old: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    for sibling in target.parent.glob(f"{target.name}.*"):  # last.old, … left by an earlier kill of a run's folders
        if sibling.is_dir():
            shutil.rmtree(sibling)
    if old.is_dir():
        shutil.copytree(old, target, symlinks=True)
    else:
        shutil.copy2(old, target)


def same_bytes(a: Path, b: Path) -> bool:
    if a.is_file() and b.is_file():
        return a.read_bytes() == b.read_bytes()
    if a.is_dir() and b.is_dir():
        files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    return False


def install_points(stop_at: int | None, counter_file: Path | None) -> None:
    """Count renames; with `stop_at` = 2c (before call c+1) or 2c + 1 (after it), SIGKILL this process there."""
    calls = {"n": 0}

    def wrap(function):
        def renamed(*args, **kwargs):
            point = 2 * calls["n"]
            if stop_at == point:
                os.kill(os.getpid(), signal.SIGKILL)
            result = function(*args, **kwargs)
            calls["n"] += 1
            if stop_at == point + 1:
                os.kill(os.getpid(), signal.SIGKILL)
            if counter_file is not None:
                counter_file.write_text(str(calls["n"]))
            return result
        return renamed

    os.replace = wrap(os.replace)
    os.rename = wrap(os.rename)
    import tscm.fileio  # the atomic folder swap (renameat2) is a rename too

    original = tscm.fileio.exchange_paths
    wrapped = wrap(original)
    for module in list(sys.modules.values()):
        if getattr(module, "exchange_paths", None) is original:
            module.exchange_paths = wrapped


def worker(argv: list[str], log: Path, stop_at: int | None, counter_file: Path | None) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 99
    try:
        install_points(stop_at, counter_file)
        from tscm import cli

        code = cli.main(argv)
    except BaseException as error:  # noqa: BLE001 - reported through the exit code and the log
        print(f"worker: {type(error).__name__}: {error}", file=sys.stderr)
        code = 98
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def check_target(spec: dict) -> tuple[str, str]:
    """("old" | "new" | "broken", detail) for the target as the killed command left it."""
    target, old = Path(spec["target"]), Path(spec["old"])
    kind = spec["check"]
    if kind in ("index", "onnx") and same_bytes(target, old):
        return "old", ""
    if kind == "index":
        from tscm.deploy.index import PlaceIndex

        index = PlaceIndex.load(target)
        return "new", f"{index.count} places"
    if kind == "onnx":
        import onnx

        from tscm.inference.onnx_export import read_onnx_metadata

        meta = read_onnx_metadata(target)
        onnx.checker.check_model(onnx.load(str(target)))
        return "new", meta["fingerprint"]
    if kind == "run":
        from tscm.models.checkpoint import load_checkpoint
        from tscm.train.checkpoints import existing_folder
        from tscm.train.training_state import load_training_state

        verdicts = []
        for name in ("last", "best"):
            folder = existing_folder(target / name)
            if folder is None:
                return "broken", f"no {name}/ (nor {name}.old/) left"
            load_checkpoint(folder)
            if name == "last":
                load_training_state(folder)
            verdicts.append("old" if same_bytes(folder, old / name) else "new")
        return ("old" if verdicts == ["old", "old"] else "new"), "/".join(verdicts)
    if kind == "city":
        from tscm.data.formats import load_placeset
        from tscm.data.synthetic.city import SPLITS, city_matches, resolve_config

        city = spec["city"]
        if not target.is_dir():
            return "broken", f"{target} is missing"
        config = resolve_config(city["preset"])
        for state, seed in (("old", city["old_seed"]), ("new", city["new_seed"])):
            if city_matches(target, city["preset"], seed, config):
                for split in SPLITS:
                    placeset = load_placeset(target, split)
                    absent = [p for p in placeset.db_paths + placeset.query_paths if not p.is_file()]
                    if absent:
                        return "broken", f"{len(absent)} images of {split} missing"
                return state, f"seed {seed}"
        return "broken", "holds neither the old city nor the new one"
    raise ValueError(kind)


def checker(spec: dict, verdict_file: Path) -> None:
    code = 0
    try:
        state, detail = check_target(spec)
    except BaseException as error:  # noqa: BLE001 - any failure to load is a broken target
        state, detail = "broken", f"{type(error).__name__}: {error}"
    verdict_file.write_text(json.dumps({"state": state, "detail": detail}))
    os._exit(code)


def run_trial(spec: dict, work: Path, number: int, *, stop_at=None, delay=None, counter_file=None) -> dict:
    restore(Path(spec["old"]), Path(spec["target"]))
    log = work / f"trial{number}.log"
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        worker(spec["argv"], log, stop_at, counter_file)
    status = None
    if delay is not None:
        deadline = started + delay
        while time.perf_counter() < deadline:
            finished, finished_status = os.waitpid(pid, os.WNOHANG)
            if finished:
                status = finished_status
                break
            time.sleep(0.005)
        else:
            os.kill(pid, signal.SIGKILL)
    if status is None:
        _, status = os.waitpid(pid, 0)
    seconds = time.perf_counter() - started
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    verdict_file = work / f"trial{number}.verdict"
    checker_pid = os.fork()
    if checker_pid == 0:
        checker(spec, verdict_file)
    os.waitpid(checker_pid, 0)
    verdict = json.loads(verdict_file.read_text()) if verdict_file.is_file() else {"state": "broken", "detail": "no verdict"}
    return {"trial": number, "stop_at": stop_at, "delay": delay, "killed": killed, "exit": code, "seconds": seconds,
            "log_tail": log.read_text(errors="replace")[-400:], **verdict}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    report_path = Path(sys.argv[2])
    work = report_path.parent / "kill-work"
    work.mkdir(exist_ok=True)
    import torch  # noqa: F401 - imported once here, inherited by every forked worker

    import tscm.cli  # noqa: F401
    from tscm import commands  # noqa: F401

    # A full run first: how long the command takes and how many renames it makes.
    counter = work / "renames"
    full = run_trial(spec, work, 0, counter_file=counter)
    renames = int(counter.read_text()) if counter.is_file() else 0
    trials = [full]
    points = list(range(2 * renames))
    if len(points) > spec["points"]:  # an even spread over the command, the first and last included
        points = sorted({points[round(i * (len(points) - 1) / (spec["points"] - 1))] for i in range(spec["points"])})
    for point in points:
        trials.append(run_trial(spec, work, len(trials), stop_at=point))
    rng = np.random.default_rng(spec.get("seed", 0))
    for fraction in spec["delays"]:
        delay = float(fraction) * full["seconds"] * rng.uniform(0.8, 1.2)
        trials.append(run_trial(spec, work, len(trials), delay=delay))
    report_path.write_text(json.dumps({"renames": renames, "trials": trials}, indent=2))


if __name__ == "__main__":
    main()
