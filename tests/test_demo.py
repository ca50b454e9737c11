"""`s3prl-star demo`, the README's main command: the mini-SUPERB pipeline as a user runs it.

The slow test is the CI variant of `make demo`: the same stages (corpus, teacher pre-training, STaR
distillation, the tasks for FBANK, the teacher and the student, the score table and plot) on the
tiny corpus with every run cut to a few steps and two of the six tasks (PR: tested on the dev-best
checkpoint; KS: the test score logged at the dev-best step); run again with a second seed, it finds
every stage finished, redoes none and adds the second seed's student; run from nothing in another folder,
it prints the same table.
"""
import json
import signal
import subprocess
import time

import pytest
import yaml

from helpers import CLI


def demo(*args):
    return subprocess.run([CLI, "demo", *args], capture_output=True, text=True)


@pytest.mark.parametrize("options, expected", [
    (["--tasks", "ks,qbe"], "--tasks: unknown qbe; expected some of pr, asr, ks, sid, ic, er"),
    (["--task-steps", "0"], "--task-steps must be positive"),
    (["--distill-steps", "1"], "--distill-steps at least 2"),
    (["--jobs", "0"], "--jobs must be positive"),
    (["--distill-lr", "0"], "--distill-lr, --seeds and --jobs must be positive"),
])
def test_demo_refuses_bad_options(tmp_path, options, expected):
    result = demo(str(tmp_path / "out"), *options)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_seeds_run_every_row_of_a_seed_before_the_next_and_keep_seed_0s_labels():
    from s3prl_star.mini_superb.demo import student_runs

    runs = [(label, seed) for label, _, seed in student_runs(compare=True, seeds=2)]
    rows = ["star", "untrained", "distilhubert", "star_layerwise", "star_intra", "star_attention"]
    assert runs == [(row, 0) for row in rows] + [(f"{row}_seed1", 1) for row in rows]
    assert [label for label, _, _ in student_runs(compare=False, seeds=2)] == ["star", "star_seed1"]


def test_demo_refuses_a_file_as_its_folder(tmp_path):
    (tmp_path / "out").write_text("mine")
    result = demo(str(tmp_path / "out"))
    assert result.returncode == 2 and "is a file" in result.stderr
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    options = ["--size", "tiny", "--teacher-steps", "10", "--distill-steps", "4", "--task-steps", "3",
               "--tasks", "pr,ks"]
    result = demo(str(out), *options)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    teacher = json.loads((out / "teacher" / "result.json").read_text())
    assert teacher["steps"] == 10 and (out / "teacher" / "teacher.pt").is_file()
    from s3prl_star.mini_superb.demo import last_step_checkpoint

    assert last_step_checkpoint(out / "distill" / "star", 4) is not None
    runner = yaml.safe_load((out / "distill" / "configs" / "star_runner.yaml").read_text())
    assert runner["optimizer"]["lr"] == 8e-3 and runner["runner"]["total_steps"] == 4
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["fbank", "teacher", "star"]
    for row in summary.values():
        assert sorted(row) == ["KS_acc", "PR_per"] and all(len(v) == 1 for v in row.values())
    table = (out / "score.md").read_text()
    assert all(label in table for label in ("fbank", "teacher", "star")) and (out / "score.png").stat().st_size > 0
    assert "=== mini-SUPERB ===" in result.stdout and "held-out masked-prediction accuracy" in result.stdout

    logs = {log.stem: log for log in (out / "logs").glob("*.log")}
    assert sorted(logs) == ["score", "student-star", "superb-fbank", "superb-fbank_no_cmvn", "superb-teacher",
                            "teacher-pretrain"]
    fbank_runs = {name: json.loads((out / "superb" / name / "superb.json").read_text())["upstream"]
                  for name in ("fbank", "fbank_no_cmvn")}
    assert fbank_runs == {"fbank": ["-u", "fbank"], "fbank_no_cmvn": ["-u", "fbank_no_cmvn"]}
    assert [task for task, entry in json.loads((out / "superb" / "fbank_no_cmvn" / "results.json").read_text())[
        "tasks"].items() if entry["status"] == "done"] == ["KS"]
    assert "$ s3prl-star pretrain" in logs["student-star"].read_text()

    repeat = demo(str(tmp_path / "repeat"), *options)  # the same command from nothing: the same table
    assert repeat.returncode == 0, repeat.stdout[-6000:] + repeat.stderr[-3000:]
    assert json.loads((tmp_path / "repeat" / "summary.json").read_text()) == summary
    assert (tmp_path / "repeat" / "score.md").read_text().replace(str(tmp_path / "repeat"), str(out)) == table

    again = demo(str(out), *options, "--seeds", "2")  # a second seed: the first one's work is kept
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    assert "is already distilled" in again.stdout
    assert last_step_checkpoint(out / "distill" / "star_seed1", 4) is not None
    summary = json.loads((out / "summary.json").read_text())
    assert all(len(v) == 2 for v in summary["star"].values()) and "±" in again.stdout

    def second_run(log: str) -> str:  # each stage's log gains the output of the second run's commands
        return logs[log].read_text().split("$ s3prl-star ")[-1]

    assert "already trained" in second_run("teacher-pretrain")
    for log in ("superb-fbank", "superb-fbank_no_cmvn", "superb-teacher", "student-star"):  # seed 0's student too
        superb_lines = "".join(line for line in second_run(log).splitlines(True) if line.startswith("superb: "))
        assert superb_lines and "training" not in superb_lines


def test_a_failing_stage_stops_the_stages_beside_it(tmp_path):
    from s3prl_star.mini_superb.demo import Stages
    from s3prl_star.processes import RUNNING

    stages = Stages(tmp_path / "logs", jobs=2, device="cpu")

    def slow(log):
        process = subprocess.Popen(["sleep", "60"])
        RUNNING.add(process)
        return process.wait()

    def failing(log):
        time.sleep(0.5)
        raise SystemExit("demo: the failing stage")

    started = time.monotonic()
    beside = stages.submit("slow", slow)
    stages.submit("failing", failing)
    with pytest.raises(SystemExit, match="the failing stage"):
        stages.wait()
    assert beside.result() == -signal.SIGTERM and time.monotonic() - started < 30
