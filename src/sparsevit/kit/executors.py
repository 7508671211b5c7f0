"""Where cells run. Every executor runs at most one cell per GPU at a time and reports
``("start", task, where)`` and ``("end", outcome)`` events for one progress view.

- ``local``: one worker, cells one after another on this machine's (first) GPU.
- ``multi-gpu``: one worker per visible GPU, each cell pinned with CUDA_VISIBLE_DEVICES.
- ``slurm``: one submitit job array; Slurm gives each task its own GPU(s). The results
  directory and this checkout must be on a filesystem the compute nodes share.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsevit.errors import SparseVitError
from sparsevit.kit.cellrun import LIVE, CellTask, Outcome, placement, record_failure, run_cell
from sparsevit.kit.state import now, tail

EXECUTORS = ("local", "multi-gpu", "slurm")
Event = tuple[str, Any, Any]


def visible_gpus(explicit: str | None = None) -> list[str]:
    """GPU ids to use: ``explicit`` ('0,1'), else CUDA_VISIBLE_DEVICES, else every GPU
    nvidia-smi lists. Ids stay strings (CUDA_VISIBLE_DEVICES also takes UUIDs)."""
    text = explicit if explicit is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is not None:
        return [g.strip() for g in text.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class PoolExecutor:
    """Worker threads on this machine, one per slot; a slot is a placement environment
    (one GPU), and a worker runs one cell at a time."""

    def __init__(self, name: str, slots: Sequence[dict[str, str]]) -> None:
        if not slots:
            raise SparseVitError(f"{name} executor: no worker slot")
        self.name, self.slots = name, list(slots)
        self.threads: list[threading.Thread] = []
        self.events: queue.Queue[Event] = queue.Queue()

    def describe(self) -> str:
        gpus = [s.get("CUDA_VISIBLE_DEVICES") for s in self.slots]
        pinned = f" on GPU(s) {', '.join(g for g in gpus if g)}" if any(gpus) else ""
        return f"{self.name}: {len(self.slots)} worker(s){pinned}"

    def run(self, tasks: Sequence[CellTask], lock_fds: dict[Path, int]) -> Iterator[Event]:
        todo: queue.Queue[CellTask] = queue.Queue()
        for task in tasks:
            todo.put(task)
        events: queue.Queue[Event] = queue.Queue()
        self.events = events

        def work(slot: dict[str, str]) -> None:
            while not LIVE.stopping.is_set():
                try:
                    task = todo.get_nowait()
                except queue.Empty:
                    return
                events.put(("start", task, slot))
                try:
                    outcome = run_cell(task, slot, lock_fds.get(task.out))
                except Exception as e:  # the runner's own trouble (disk full...): report it
                    outcome = Outcome(task, "FAIL", 0.0, dict(slot), f"runner error: {e!r}")
                events.put(("end", outcome, None))

        threads = [threading.Thread(target=work, args=(slot,), daemon=True)
                   for slot in self.slots]
        self.threads = threads
        for t in threads:
            t.start()
        ended = 0
        while ended < len(tasks):
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and events.empty():
                    break  # stopped: the rest of the queue is left for the next run
                continue
            ended += event[0] == "end"
            yield event

    def cancel(self) -> list[Outcome]:
        """End the running cells, wait for the workers; the outcomes they still reported."""
        LIVE.stop_all()
        for t in self.threads:
            t.join()
        ended = []
        while not self.events.empty():
            kind, outcome, _ = self.events.get_nowait()
            if kind == "end":
                ended.append(outcome)
        return ended


def local_executor(gpus: str | None = None) -> PoolExecutor:
    """One worker; pinned to the first of ``gpus`` when given, else it inherits the GPUs."""
    extra = {}
    if gpus:
        ids = visible_gpus(gpus)
        if ids:
            extra["CUDA_VISIBLE_DEVICES"] = ids[0]
    return PoolExecutor("local", [placement("local", "0", extra)])


def multi_gpu_executor(gpus: str | None = None) -> PoolExecutor:
    ids = visible_gpus(gpus)
    if not ids:
        raise SparseVitError("multi-gpu executor: no GPU found (nvidia-smi lists none and "
                             "CUDA_VISIBLE_DEVICES is unset); give --gpus 0,1,...")
    if len(set(ids)) != len(ids):
        raise SparseVitError(f"--gpus lists a GPU twice: {','.join(ids)}")
    return PoolExecutor("multi-gpu", [placement("multi-gpu", str(i), {"CUDA_VISIBLE_DEVICES": g})
                                      for i, g in enumerate(ids)])


@dataclass
class SlurmOptions:
    folder: Path
    partition: str | None = None
    time_min: int | None = None
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    parallelism: int | None = None
    cluster: str = "slurm"  # submitit's 'local' or 'debug' run the same jobs without Slurm
    poll_s: float = 5.0


class SlurmExecutor:
    """One submitit job array over the cells; failures Slurm itself causes (time limit,
    preemption, node failure) become FAIL/TLE logs with the job's stderr tail."""

    name = "slurm"

    def __init__(self, opts: SlurmOptions, cell_timeout_s: float | None) -> None:
        try:
            import submitit
        except ImportError:
            raise SparseVitError("the slurm executor needs submitit: "
                                 "pip install -e '.[slurm]'") from None
        if opts.cluster == "slurm" and shutil.which("sbatch") is None:
            raise SparseVitError("slurm executor: no sbatch on PATH (run it on a Slurm login "
                                 "node, or use --executor local / multi-gpu)")
        self.opts, self.submitit = opts, submitit
        limit = opts.time_min or int((cell_timeout_s or 3600) // 60) + 10  # room past the cell's
        self.executor = submitit.AutoExecutor(folder=opts.folder / "%j", cluster=opts.cluster)
        params: dict[str, Any] = {"name": "sparsevit-cell", "timeout_min": limit,
                                  "tasks_per_node": 1, "nodes": 1}
        if opts.cluster != "debug":
            params["gpus_per_node"] = opts.gpus_per_task
        if opts.cpus_per_task:
            params["cpus_per_task"] = opts.cpus_per_task
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.parallelism:
            params["slurm_array_parallelism"] = opts.parallelism
        self.executor.update_parameters(**params)
        self.jobs: list[Any] = []

    def describe(self) -> str:
        return (f"slurm ({self.opts.cluster}): one job per cell, {self.opts.gpus_per_task} "
                f"GPU(s) each, job logs in {self.opts.folder}")

    def run(self, tasks: Sequence[CellTask], lock_fds: dict[Path, int]) -> Iterator[Event]:
        from sparsevit.kit.cellrun import run_slurm_job

        if not tasks:
            return
        self.jobs = self.executor.map_array(run_slurm_job, list(tasks))
        pending = dict(zip(self.jobs, tasks, strict=True))
        started: set[Any] = set()
        while pending:
            for job, task in list(pending.items()):
                if job not in started and (job.done() or job.state == "RUNNING"):
                    started.add(job)
                    yield ("start", task, {"slurm_job_id": str(job.job_id)})
                if job.done():
                    del pending[job]
                    yield ("end", self._outcome(job, task), None)
            if pending:
                time.sleep(self.opts.poll_s)

    def _outcome(self, job: Any, task: CellTask) -> Outcome:
        try:
            return job.result()
        except Exception as e:  # submitit's FailedJobError / UncompletedJobError
            lines = tail(Path(job.paths.stderr))
            text = f"{job.state} {e}"
            timed_out = any(w in text.upper() for w in ("TIMEOUT", "TIME LIMIT"))
            status = "TLE" if timed_out else "FAIL"
            reason = f"Slurm job {job.job_id} ended {job.state}: {str(e).splitlines()[0][:200]}"
            record = {"ended": now(), "slurm_job_id": str(job.job_id), "executor": "slurm"}
            log = record_failure(task, status, reason, record, lines)
            return Outcome(task, status, 0.0, {"slurm_job_id": str(job.job_id)}, reason, log)

    def cancel(self) -> list[Outcome]:
        """scancel the jobs still queued or running: their cells are redone next run."""
        for job in self.jobs:
            if not job.done():
                job.cancel(check=False)
        return []
