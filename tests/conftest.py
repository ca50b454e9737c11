"""Shared fixtures: generated speech (and its length CSVs, once per module), random-initialised teachers
and a tiny random student, made once per test session.

Nothing is downloaded: the corpus is espeak-ng speech in LibriSpeech layout and the teachers are
random weights saved in the checkpoint formats s3prl's `*_local` upstreams read.
"""
import pytest


@pytest.fixture(scope="session")
def mini_librispeech(tmp_path_factory):
    """A LibriSpeech-layout corpus root with `train-clean-100` and `dev-clean` (espeak-ng speech)."""
    from s3prl_star.mini_superb.synthetic import make_librispeech

    root = tmp_path_factory.mktemp("LibriSpeech")
    make_librispeech(root, {"train-clean-100": 24, "dev-clean": 8}, seed=0)
    return root


@pytest.fixture(scope="module")
def csv_dir(mini_librispeech, tmp_path_factory):
    """The length CSVs s3prl's pretrain data reads (`len_for_bucket/train-clean-100.csv`) of
    `mini_librispeech`, written by `s3prl-star prepare-librispeech` (`helpers.length_csvs`)."""
    from helpers import length_csvs

    return length_csvs(mini_librispeech, tmp_path_factory.mktemp("len_for_bucket"))


@pytest.fixture(scope="session")
def tiny_hubert_teacher(tmp_path_factory):
    """Path of a 2-layer random HuBERT saved in the format `hubert_local` loads."""
    from s3prl_star.mini_superb.random_teacher import save_random_teacher

    path = tmp_path_factory.mktemp("teachers") / "tiny_hubert.pt"
    save_random_teacher("hubert", path, layers=2, embed_dim=64, ffn_dim=128, heads=4, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory):
    """(path, model): a random star_hubert of shape `helpers.TINY_STUDENT` (torch seed 0, eval mode) and
    the file `save_student` wrote for it; the model is the reference that file must reproduce."""
    import torch

    from helpers import TINY_STUDENT
    from s3prl_star.model.checkpoint import save_student
    from s3prl_star.model.star_hubert import build_preset

    with torch.random.fork_rng():  # the seed does not leak into the tests that run after
        torch.manual_seed(0)
        model = build_preset("star_hubert", **TINY_STUDENT).eval()
    path = tmp_path_factory.mktemp("student") / "tiny_star_hubert.pt"
    save_student(path, model)
    return path, model


@pytest.fixture(scope="session")
def tiny_student_checkpoint(tiny_student):
    """Path of the `tiny_student` file, as `-k` / `s3prl-star export` take it."""
    return tiny_student[0]


# SUPERB metrics the task tests measured, in their metric keys (docs/superb.md): listed at the end of
# the run (pytest captures a passing test's prints), so the CI log shows every task's number.
MEASURED_METRICS: list[tuple[str, float, str]] = []


@pytest.fixture
def superb_metric(request):
    """`superb_metric(key, value)` records a metric this test measured (a metric key of docs/superb.md,
    e.g. "ASR_wer" in percent, "QbE_mtwv" raw) for the run's summary."""

    def record(key: str, value: float):
        MEASURED_METRICS.append((key, float(value), request.node.nodeid))

    return record


# How long the project's single-node SLURM took to start (apt-get included where it installed) and stop.
SLURM_TIMES: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if SLURM_TIMES:
        terminalreporter.section("the single-node SLURM of scripts/local_slurm.sh")
        terminalreporter.write_line(", ".join(f"{what} in {seconds:.1f} s" for what, seconds in SLURM_TIMES.items()))
    if MEASURED_METRICS:
        terminalreporter.section("SUPERB metrics measured by the task tests (tiny random student, generated data)")
        for key, value, nodeid in sorted(MEASURED_METRICS):
            terminalreporter.write_line(f"{key:<9} {value:9.3f}  {nodeid}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A single-node SLURM on this machine, started by the project's own `scripts/local_slurm.sh` (which
    installs slurm-wlm and munge with apt-get when missing) and stopped by PID at the end: the environment
    variables its clients need (`SLURM_CONF`). Skipped, saying why, where it cannot start (no root)."""
    import os
    import subprocess
    import time

    from helpers import REPO

    folder = tmp_path_factory.mktemp("slurm")
    script = REPO / "scripts" / "local_slurm.sh"
    begun = time.monotonic()
    started = subprocess.run([str(script), "start", str(folder)], capture_output=True, text=True, timeout=600)
    SLURM_TIMES["started"] = time.monotonic() - begun
    if started.returncode == 3:
        pytest.skip(f"no SLURM cluster here: {started.stderr.strip()}")
    assert started.returncode == 0, started.stdout + started.stderr
    yield {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    begun = time.monotonic()
    stopped = subprocess.run([str(script), "stop", str(folder)], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    SLURM_TIMES["stopped"] = time.monotonic() - begun
