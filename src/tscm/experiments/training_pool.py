"""Several training runs at once, in worker processes (one per job, each run in turn with its share of the threads).

The small presets train on batches too small to keep two threads busy inside one operation: on 2 cores two
one-thread runs side by side do about 1.2-1.4 times the work of one two-thread run (README, "Training runs
side by side"). A run's result depends on its thread count, not on what runs beside it, so each run here
repeats exactly as `tscm train-teacher` / `tscm distill` alone with the same settings and `--threads`.

A task may name another task whose checkpoint it needs (a distilled student and its teacher); it starts once
that one has finished. With one job the runs go one after another in this process.
"""

from __future__ import annotations

import multiprocessing
import queue
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from tscm.config import TrainConfig
from tscm.errors import TscmError
from tscm.experiments.common import RunOptions, TrainedModel, train_student_run, train_teacher_run


@dataclass(frozen=True)
class TrainingTask:
    """One training run: `kind` is "teacher" or "student"; a student with `teacher_task` is distilled from that
    task's best checkpoint, one with `teacher` from that checkpoint, one with neither trains alone."""

    name: str
    kind: str
    config: TrainConfig
    command: str
    teacher_task: str | None = None
    teacher: Path | None = None


def threads_per_job(threads: int, jobs: int) -> int:
    """Each of `jobs` runs gets an equal share of `threads` (at least one); 0 (the library's default) stays 0."""
    return 0 if threads == 0 else max(1, threads // jobs)


def options_per_job(options: RunOptions, jobs: int) -> RunOptions:
    """The run options each of `jobs` side-by-side runs trains with: its share of the threads, and progress
    bars only when runs go one at a time (two bars would overwrite each other)."""
    return replace(options, threads=threads_per_job(options.threads, jobs), progress=options.progress and jobs == 1)


def run_task(task: TrainingTask, teacher: Path | None) -> TrainedModel:
    if task.kind == "teacher":
        return train_teacher_run(task.config, task.command)
    return train_student_run(task.config, teacher, task.command)


def run_tasks(tasks: Sequence[TrainingTask], jobs: int, on_start: Callable[[TrainingTask], None],
              on_finish: Callable[[TrainingTask, TrainedModel], None]) -> dict[str, TrainedModel]:
    """Run every task, at most `jobs` at once, in the given order as far as their teachers allow; the results by
    task name. A failed run stops the others (their folders keep their last checkpoints) and its error is raised."""
    names = [task.name for task in tasks]
    for task in tasks:
        if task.teacher_task is not None and task.teacher_task not in names:
            raise TscmError(f"training task {task.name}: its teacher task {task.teacher_task!r} is not among the tasks")
    if jobs <= 1:
        return _run_in_order(tasks, on_start, on_finish)
    return _run_in_processes(tasks, jobs, on_start, on_finish)


def run_tasks_logged(tasks: Sequence[TrainingTask], jobs: int, log: Callable[[str], None]) -> dict[str, TrainedModel]:
    """`run_tasks`, saying when each run starts and when it is done (with its wall time)."""
    return run_tasks(tasks, jobs, on_start=lambda task: log(f"  start {task.name}"),
                     on_finish=lambda task, trained: log(f"  done  {task.name} ({trained.wall_s:.0f} s)"))


def _run_in_order(tasks, on_start, on_finish) -> dict[str, TrainedModel]:
    done: dict[str, TrainedModel] = {}
    pending = list(tasks)
    while pending:
        task = next(t for t in pending if _ready(t, done))
        pending.remove(task)
        on_start(task)
        done[task.name] = run_task(task, _teacher_checkpoint(task, done))
        on_finish(task, done[task.name])
    return done


def _ready(task: TrainingTask, done: dict[str, TrainedModel]) -> bool:
    """Whether the task can start: it needs no teacher task, or that one has finished."""
    return task.teacher_task is None or task.teacher_task in done


def _teacher_checkpoint(task: TrainingTask, done: dict[str, TrainedModel]) -> Path | None:
    return done[task.teacher_task].checkpoint if task.teacher_task is not None else task.teacher


def _run_reporting(task: TrainingTask, teacher: Path | None, results) -> None:
    """One run in a worker, then its result (or its error, as the parent can rebuild it)."""
    try:
        results.put((task.name, run_task(task, teacher), None))
    except TscmError as error:
        results.put((task.name, None, error))
    except BaseException:  # noqa: BLE001 - an unexpected failure travels as its traceback text
        results.put((task.name, None, RuntimeError(f"training run {task.name} failed:\n{traceback.format_exc()}")))


def _worker(inbox, results) -> None:
    """A spawned worker's life: the runs it is handed, one at a time, until it is handed None. Workers outlive
    their runs so that each pays for importing torch and the model code once, not once per run (seconds each)."""
    while (item := inbox.get()) is not None:
        _run_reporting(*item, results)


def _run_in_processes(tasks, jobs, on_start, on_finish) -> dict[str, TrainedModel]:
    # spawn, not fork: a forked child would inherit torch's thread pools and locks in whatever state they are in
    context = multiprocessing.get_context("spawn")
    inbox, results = context.Queue(), context.Queue()
    workers = [context.Process(target=_worker, args=(inbox, results), name=f"tscm-train-{index}")
               for index in range(min(jobs, len(tasks)))]
    for worker in workers:
        worker.start()
    done: dict[str, TrainedModel] = {}
    pending = list(tasks)
    running: list[str] = []
    try:
        while pending or running:
            for task in [t for t in pending if _ready(t, done)]:
                if len(running) >= len(workers):
                    break
                pending.remove(task)
                on_start(task)
                inbox.put((task, _teacher_checkpoint(task, done)))
                running.append(task.name)
            name, trained, error = _next_result(results, workers, running)
            running.remove(name)
            if error is not None:
                raise error
            done[name] = trained
            on_finish(next(t for t in tasks if t.name == name), trained)
        for _ in workers:
            inbox.put(None)
        for worker in workers:
            worker.join()
    finally:
        for worker in workers:  # a failure or Ctrl-C: stop the runs still going
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join()
    return done


def _next_result(results, workers: list, running: list[str]) -> tuple:
    """The next finished run's (name, result, error); a worker that died without a word is an error too."""
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            for worker in workers:
                if worker.exitcode is not None and results.empty():
                    names = ", ".join(running)
                    return running[0], None, TscmError(
                        f"training run(s) {names}: a worker process ended with exit code {worker.exitcode} before "
                        "reporting (out of memory?)")
