"""Where the suite's runs execute: as subprocesses of the driver (`local`), or as SLURM batch jobs (`slurm`).

A run is one `s3prl-star downstream ARGS` (a training, a test evaluation, a QbE layer) with its stdout and
stderr in files under OUT. Both launchers block until the run has ended and raise `RunFailed`, quoting
the error the run printed, when it did not succeed.

SLURM (docs/cluster.md). Each run is its own batch job (`sbatch`), named after OUT and the run, writing its
output where a local run would. Beside the run's stdout file the driver keeps `<stdout>.job` (the job id and
command) and the job leaves `<stdout>.exit` (its exit status) when it ends, so that a driver killed and
started again adopts a job still queued or running instead of submitting it twice, takes a job that
succeeded meanwhile as done, and submits again one that failed or vanished. A job holds an exclusive lock
on `.run.lock` in its run folder while it runs (`flock`): two jobs never write one run folder, whoever
submitted them. `cancel(OUT)` cancels every job of an OUT.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from s3prl_star.atomic import write_atomically
from s3prl_star.processes import CommandFailed, Progress, error_line, last_progress, run_cli, tail

ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}
BUSY_EXIT = 75  # a job that found its run folder locked by another job


class RunFailed(RuntimeError):
    """A run ended without success; the message names it and quotes its error."""


@dataclass
class LocalLauncher:
    """Runs as subprocesses of the driver, inheriting its lock on OUT (so a killed driver's runs still hold it)."""

    out: Path
    lock_fd: int

    def run(self, label: str, args: Sequence[str], stdout: Path, append: bool, gpu: str | None,
            on_progress: Callable[[Progress], None]) -> None:
        try:
            run_cli(args, stdout=stdout, stderr=stdout.with_suffix(".err"), append=append, cwd=self.out,
                    env={"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None, on_progress=on_progress,
                    progress_skip=("train",), pass_fds=(self.lock_fd,))  # `train`: s3prl's per-epoch bar
        except CommandFailed as error:
            raise RunFailed(f"{label}: {error}") from None

    def has_earlier_job(self, label: str, stdout: Path) -> bool:
        """Never: a killed driver's runs hold OUT's lock, so no driver runs beside them."""
        return False


def job_name_prefix(out: Path) -> str:
    """The prefix of every job name of one OUT: its folder name and a digest of its absolute path."""
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    return f"s3prl-star.{re.sub(r'[^A-Za-z0-9_.-]', '_', out.name)}.{digest}."


def _slurm(command: Sequence[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise RunFailed(f"`{command[0]}` not found: --launcher slurm needs the SLURM client tools on PATH") from None


def job_state(job_id: str) -> str | None:
    """The job's state while SLURM still knows it (squeue, else scontrol for a recently ended job), else None."""
    queued = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T"])
    if queued.returncode == 0 and queued.stdout.strip():
        return queued.stdout.split()[0]
    shown = _slurm(["scontrol", "show", "job", job_id])
    found = re.search(r"JobState=(\S+)", shown.stdout) if shown.returncode == 0 else None
    return found[1] if found else None


def jobs_named(prefix: str) -> dict[str, str]:
    """{job id: job name} of the queued or running jobs whose name starts with `prefix`."""
    listed = _slurm(["squeue", "-h", "-o", "%i %j"])
    if listed.returncode != 0:
        raise RunFailed(f"squeue failed: {listed.stderr.strip().splitlines()[-1] if listed.stderr.strip() else listed.returncode}")
    jobs = (line.split(maxsplit=1) for line in listed.stdout.splitlines() if line.strip())
    return {job: name for job, name in jobs if name.startswith(prefix)}


@dataclass
class SlurmLauncher:
    """Runs as SLURM batch jobs; `sbatch_args` (from --slurm-args) choose the partition, GPUs, time limit."""

    out: Path
    sbatch_args: list[str] = field(default_factory=list)
    poll_seconds: float = 5.0
    say: Callable[[str], None] = print

    def run(self, label: str, args: Sequence[str], stdout: Path, append: bool, gpu: str | None,
            on_progress: Callable[[Progress], None]) -> None:
        command = [sys.executable, "-m", "s3prl_star.cli", *args]
        record, status = _sibling(stdout, ".job"), _sibling(stdout, ".exit")
        name = self._job_name(label)
        job = self._adopt(label, name, record, status, command)
        if job == "done":
            return
        if job is None:
            job = self._submit(label, name, command, stdout, record, status, append)
        self._wait(label, job, stdout, status, on_progress)

    def has_earlier_job(self, label: str, stdout: Path) -> bool:
        """Whether an earlier driver's job of this run is queued or running, or succeeded: `run` adopts it or
        takes it as done, and its folder is not to be cleared."""
        earlier = self._earlier_job(self._job_name(label), _sibling(stdout, ".job"), _sibling(stdout, ".exit"))
        return earlier is not None and earlier[0] != "failed"

    def _job_name(self, label: str) -> str:
        return job_name_prefix(self.out) + re.sub(r"[^A-Za-z0-9_.-]", ".", label)

    def _earlier_job(self, name: str, record: Path, status: Path) -> tuple[str, str, str | None] | None:
        """What earlier drivers left of this run, as (kind, job id, state): "active" (the recorded job is queued
        or running), "done" (it succeeded), "unrecorded" (a queued or running job of this run's name that no
        record names: its driver was killed before it recorded it), "failed" (the recorded job ended without
        success, and no other runs); None when no job was ever submitted."""
        recorded = _read_record(record)
        state = None
        if recorded is not None:
            state = job_state(recorded["job_id"])
            if state in ACTIVE_STATES:
                return "active", recorded["job_id"], state
            if _exit_status(status) == 0:
                return "done", recorded["job_id"], state
        for job, found in jobs_named(name).items():
            if found == name:
                return "unrecorded", job, None
        return ("failed", recorded["job_id"], state) if recorded is not None else None

    def _adopt(self, label: str, name: str, record: Path, status: Path, command: list[str]) -> str | None:
        """The id of this run's job still queued or running (recorded, or found by name), "done" when the recorded
        job succeeded meanwhile, else None (never submitted, or failed, cancelled or vanished: submit again).
        A run is its stdout file: a job writing it is adopted whatever command started it (the driver resumes
        with `-a` what a first job started without)."""
        earlier = self._earlier_job(name, record, status)
        if earlier is None:
            return None
        kind, job, state = earlier
        if kind == "failed":
            self.say(f"{label}: SLURM job {job} ended without success{f' ({state.lower()})' if state else ''}; "
                     "submitting it again")
            return None
        if kind == "done":
            self.say(f"{label}: SLURM job {job} ended successfully while no driver watched it")
            return "done"
        if kind == "unrecorded":
            _write_record(record, job, command)
            self.say(f"{label}: adopting SLURM job {job}")
        else:
            self.say(f"{label}: adopting SLURM job {job} ({state.lower()})")
        return job

    def _submit(self, label: str, name: str, command: list[str], stdout: Path, record: Path, status: Path,
                append: bool) -> str:
        stdout.parent.mkdir(parents=True, exist_ok=True)
        script = _sibling(stdout, ".sh")
        shown = "s3prl-star " + " ".join(command[3:])
        script.write_text("\n".join([
            "#!/bin/bash",
            f"# {label}: written by s3prl-star superb --launcher slurm",
            f"cd {shlex.quote(str(self.out))}",
            f"exec 9>>{shlex.quote(str(stdout.parent / '.run.lock'))}",
            f"flock -n 9 || {{ echo 'another job writes {stdout.parent}' >&2; exit {BUSY_EXIT}; }}",
            f"rm -f {shlex.quote(str(status))}",
            f"echo \"# $(date '+%Y-%m-%d %H:%M:%S') SLURM job $SLURM_JOB_ID \\$ {shown}\"" if append else ":",
            f"PYTHONUNBUFFERED=1 {shlex.join(command)}",
            "code=$?",
            f"echo $code > {shlex.quote(str(status))}.tmp && mv {shlex.quote(str(status))}.tmp {shlex.quote(str(status))}",
            "exit $code", ""]))
        submitted = _slurm(["sbatch", "--parsable", f"--job-name={name}", f"--output={stdout}",
                            f"--error={stdout.with_suffix('.err')}", f"--open-mode={'append' if append else 'truncate'}",
                            *self.sbatch_args, str(script)])
        if submitted.returncode != 0:
            raise RunFailed(f"{label}: sbatch refused the job: {submitted.stderr.strip()}")
        job = submitted.stdout.strip().split(";")[0]
        _write_record(record, job, command)
        self.say(f"{label}: submitted SLURM job {job} ({name})")
        return job

    def _wait(self, label: str, job: str, stdout: Path, status: Path, on_progress: Callable[[Progress], None]) -> None:
        errors, last = stdout.with_suffix(".err"), None
        while (state := job_state(job)) in ACTIVE_STATES:
            progress = last_progress(tail(errors, 4096), skip=("train",))
            if progress is not None and progress != last:
                last = progress
                on_progress(progress)
            time.sleep(self.poll_seconds)
        code = _exit_status(status)
        if code == 0:
            return
        said = error_line(tail(errors))
        if code is None:
            raise RunFailed(f"{label}: SLURM job {job} ended {(state or 'and vanished').lower()} before the run "
                            f"finished (cancelled, preempted or lost); its output: {errors}" + (f": {said}" if said else ""))
        if code == BUSY_EXIT:
            raise RunFailed(f"{label}: SLURM job {job} found {stdout.parent} locked by another job")
        raise RunFailed(f"{label}: SLURM job {job}: `s3prl-star downstream` exited with {code}; its output: {errors}"
                        + (f": {said}" if said else ""))


def cancel(out: Path) -> list[str]:
    """Cancel every queued or running job of OUT's suite (found by name); one line per job cancelled."""
    jobs = jobs_named(job_name_prefix(out))
    if jobs:
        cancelled = _slurm(["scancel", *jobs])
        if cancelled.returncode != 0:
            raise RunFailed(f"scancel failed: {cancelled.stderr.strip().splitlines()[-1] if cancelled.stderr.strip() else cancelled.returncode}")
    return [f"cancelled SLURM job {job} ({name})" for job, name in sorted(jobs.items())]


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _write_record(path: Path, job: str, command: list[str]) -> None:
    write_atomically(path, lambda temporary: Path(temporary).write_text(
        json.dumps({"job_id": job, "command": command}) + "\n"))


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) and {"job_id", "command"} <= set(record) else None


def _exit_status(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
