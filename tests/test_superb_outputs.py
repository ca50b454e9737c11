"""What `s3prl-star superb` and `s3prl-star export` write, and what they must never lose (issue 21).

- Nothing deleted that the tool did not write: `--submission DIR` is checked before any run (not OUT,
  not inside it, not holding it, not a link or a file, no file there it did not write) and replaces only
  the files its manifest lists; `export -o` refuses its own input, by any path.
- No stale or mixed result: each task records its inputs (OUT/<task>/inputs.json); a rerun with other
  inputs (overrides, the checkpoint's content at the same path, the learning-rate grid) is refused naming
  what changed, `--redo` moves the old folder aside and runs the task again; a leftover `lr*` trial of
  another grid is never chosen; a damaged result.json is read again from the runs.
- Named errors instead of tracebacks: `-o` a file or a read-only folder, a damaged superb.json, a full
  disk under results.json (the old file intact), and a failed run's line quoting its exception, not the
  progress bar its log ends with.

Fast tests run the driver with a DATA.yaml that points nowhere (every check happens before a run); the
slow ones train FBANK or the tiny student 4 steps on a tiny Speech Commands corpus.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from helpers import (QUICK, corrupt_middle, fill_up, read_only_folder, speech_commands_entry, superb, tmpfs,
                     write_data)
from s3prl_star.superb.tasks import TASKS


def nowhere(tmp_path: Path) -> str:
    """A DATA.yaml with no task in it: every task is skipped, nothing trains."""
    return str(write_data(tmp_path / "data.yaml", {}))


def no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]


# --- --submission DIR: checked before any run, never removing what the tool did not write ----------------

@pytest.mark.parametrize("case", ["OUT itself", "inside OUT", "holds OUT"])
def test_submission_folder_that_is_holds_or_lies_in_out_is_refused_before_any_run(tmp_path, case):
    """The issue's `-o DIR/predict --submission DIR` deleted the whole run folder, exit 0."""
    out = tmp_path / "sub" / "predict" if case == "holds OUT" else tmp_path / "out"
    directory = {"OUT itself": out, "inside OUT": out / "submission", "holds OUT": tmp_path / "sub"}[case]
    checkpoint = out / "ks" / "lr0.0001" / "states-4.ckpt"  # an earlier run's work
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    result = superb("-u", "fbank", "--data", nowhere(tmp_path), "-o", str(out), "--submission", str(directory))
    where = {"OUT itself": "is the output folder", "inside OUT": "is inside the output folder",
             "holds OUT": "contains the output folder"}[case]
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"s3prl-star superb: --submission {directory}: {where} {out}; expected a folder outside it\n"
    assert checkpoint.read_bytes() == b"weights" and not (out / "results.json").exists() and result.stdout == ""


@pytest.mark.parametrize("kind", ["link", "file"])
def test_submission_target_that_is_a_link_or_a_file_is_refused_before_any_run(tmp_path, kind):
    directory = tmp_path / "submission"
    if kind == "link":
        (tmp_path / "elsewhere").mkdir()
        directory.symlink_to(tmp_path / "elsewhere")
        expected = f"a symbolic link (to {tmp_path / 'elsewhere'}); give the folder itself"
    else:
        directory.write_text("my notes\n")
        expected = "not a folder; expected a folder for predict/ and predict.zip"
    out = tmp_path / "out"
    result = superb("-u", "fbank", "--data", nowhere(tmp_path), "-o", str(out), "--submission", str(directory))
    assert result.returncode == 2 and result.stderr == f"s3prl-star superb: --submission {directory}: {expected}\n"
    assert not out.exists() and (kind == "link" or directory.read_text() == "my notes\n")


def test_submission_folder_holding_files_the_tool_did_not_write_is_refused_and_left_as_it_is(tmp_path):
    directory = tmp_path / "submission"
    (directory / "predict" / "asr_public").mkdir(parents=True)
    (directory / "predict" / "asr_public" / "predict.ark").write_text("my hand-made predictions\n")
    (directory / "predict.zip").write_bytes(b"my earlier zip")
    result = superb("-u", "fbank", "--data", nowhere(tmp_path), "-o", str(tmp_path / "out"),
                    "--submission", str(directory))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (f"s3prl-star superb: --submission {directory}: predict.zip, predict/asr_public/predict.ark "
                             "not written by s3prl-star (or changed since); move them away or choose another folder: "
                             "nothing of them is replaced or deleted\n")
    assert (directory / "predict" / "asr_public" / "predict.ark").read_text() == "my hand-made predictions\n"
    assert (directory / "predict.zip").read_bytes() == b"my earlier zip"
    assert sorted(path.name for path in directory.iterdir()) == ["predict", "predict.zip"]


def test_gather_replaces_only_the_files_it_wrote(tmp_path):
    """A second gather replaces the first one's files; a file it did not write, or one changed since it
    wrote it, stops it before anything is written; a task no longer done loses only its own files."""
    from s3prl_star.superb.submission import SubmissionError, gather

    out, directory = tmp_path / "out", tmp_path / "submission"
    run = out / "ks" / "lr0.0001"
    run.mkdir(parents=True)
    (run / "test_predict.txt").write_text("first\n")
    (run / "evaluate.done").write_text("dev-best.ckpt\n")
    done = {"KS": {"status": "done", "chosen": "ks/lr0.0001", "metrics": {"KS_acc": 50.0}}}
    predicted = directory / "predict" / "ks_public" / "predict.txt"
    directory.mkdir()
    (directory / "README").write_text("mine\n")  # beside predict/: never looked at

    assert "submission: KS included (ks_public)" in gather(out, directory, done)
    assert predicted.read_text() == "first\n"
    (run / "test_predict.txt").write_text("second\n")
    gather(out, directory, done)
    assert predicted.read_text() == "second\n"
    with zipfile.ZipFile(directory / "predict.zip") as archive:
        assert archive.namelist() == ["predict/ks_public/predict.txt"]
        assert archive.read("predict/ks_public/predict.txt") == b"second\n"

    zipped = (directory / "predict.zip").read_bytes()
    for name, change in (("predict/ks_public/notes.txt", "added"), ("predict/ks_public/predict.txt", "edited")):
        path = directory / name
        kept = path.read_text() if path.exists() else None
        path.write_text("the user's\n")
        with pytest.raises(SubmissionError, match=f"{name} not written by s3prl-star"):
            gather(out, directory, done)
        assert path.read_text() == "the user's\n" and (directory / "predict.zip").read_bytes() == zipped, change
        path.unlink() if kept is None else path.write_text(kept)

    lines = gather(out, directory, {"KS": {"status": "failed", "reason": "KS/lr0.0001: exited with 1"}})
    assert "submission: KS not included (failed: KS/lr0.0001: exited with 1)" in lines
    assert not (directory / "predict" / "ks_public").exists() and (directory / "predict").is_dir()
    with zipfile.ZipFile(directory / "predict.zip") as archive:
        assert archive.namelist() == []
    assert (directory / "README").read_text() == "mine\n"


# --- export: never over its input ---------------------------------------------------------------------

def test_export_refuses_an_output_that_is_its_input(tmp_path, tiny_student_checkpoint, capsys):
    from s3prl_star.model.export import main

    checkpoint = tmp_path / "student.pt"
    shutil.copyfile(tiny_student_checkpoint, checkpoint)
    original = checkpoint.read_bytes()
    (tmp_path / "folder").mkdir()
    (tmp_path / "link.onnx").symlink_to(checkpoint)
    os.link(checkpoint, tmp_path / "hard.onnx")
    for output in (checkpoint, tmp_path / "link.onnx", tmp_path / "folder" / ".." / "student.pt", tmp_path / "hard.onnx"):
        assert main([str(checkpoint), "--format", "onnx", "-o", str(output)]) == 2, output
        assert capsys.readouterr().err == (f"s3prl-star export: -o {output} is the checkpoint {checkpoint} (the same "
                                           "file); expected another file, so that the input is not overwritten\n")
        assert checkpoint.read_bytes() == original


# --- named errors before any run ----------------------------------------------------------------------

def test_output_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "results.txt"
    out.write_text("not a folder\n")
    result = superb("-u", "fbank", "--data", nowhere(tmp_path), "-o", str(out))
    assert result.returncode == 2 and result.stderr == (
        f"s3prl-star superb: -o {out}: not a folder; expected an output folder (new, or of an earlier "
        "`s3prl-star superb`)\n"), result.stderr
    assert out.read_text() == "not a folder\n"


def test_read_only_output_folder_is_refused_naming_it(tmp_path):
    with read_only_folder(tmp_path / "read-only") as out:
        result = superb("-u", "fbank", "--data", nowhere(tmp_path), "-o", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"s3prl-star superb: -o {out}: cannot create {out / '.lock'} (") and \
        result.stderr.endswith("); expected a folder this user can write\n") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("content", ["", '{"upstream": ["-u", "fb'])
def test_damaged_superb_json_is_a_named_error(tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "superb.json").write_text(content)
    result = superb("-u", "fbank", "--data", nowhere(tmp_path), "-o", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"s3prl-star superb: {out / 'superb.json'}: unreadable (JSONDecodeError: ")
    assert result.stderr.endswith("; it records the upstream " f"{out} holds the runs of: restore it, or use another -o\n")
    assert (out / "superb.json").read_text() == content


def test_redo_of_a_task_not_in_tasks_is_refused(tmp_path):
    result = superb("-u", "fbank", "--data", nowhere(tmp_path), "--tasks", "asr", "--redo", "ks", "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr == (
        "s3prl-star superb: --redo: ks not in --tasks; expected some of the tasks this run runs\n")


def test_task_folder_without_a_record_of_its_inputs_is_refused(tmp_path):
    """A folder of an older s3prl-star (or made by hand): what produced it is unknown, so it is neither
    reported nor resumed; the other tasks still run, the exit is 1."""
    out = tmp_path / "out"
    checkpoint = out / "ks" / "lr0.0001" / "states-2.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    result = superb("-u", "fbank", "--data", nowhere(tmp_path), "--tasks", "ks,asr", "-o", str(out))
    reason = (f"{out / 'ks'} has no inputs.json (made by an older s3prl-star or by hand): what produced its runs is "
              "unknown; `--redo ks` runs it again (its folder is kept, renamed)")
    assert result.returncode == 1 and f"superb: KS: refused, {reason}\n" in result.stdout, result.stdout
    assert "superb: ASR: skipped" in result.stdout and "; refused: KS" in result.stdout
    assert json.loads((out / "results.json").read_text())["tasks"]["KS"] == {"status": "refused", "reason": reason}
    assert checkpoint.read_bytes() == b"weights"


def test_full_disk_while_writing_results_json_is_a_named_error_and_keeps_the_old_file(tmp_path):
    data = nowhere(tmp_path)
    with tmpfs(tmp_path / "disk", size_kib=64) as disk:
        out = disk / "out"
        first = superb("-u", "fbank", "--data", data, "--tasks", "ks", "-o", str(out))
        assert first.returncode == 0, first.stdout + first.stderr
        before = (out / "results.json").read_bytes()
        fill_up(disk)
        full = superb("-u", "fbank", "--data", data, "--tasks", "ks", "-o", str(out))
        assert full.returncode == 1, full.stdout + full.stderr
        assert full.stderr == f"s3prl-star superb: cannot write {out / 'results.json'}: No space left on device\n"
        assert (out / "results.json").read_bytes() == before
        assert sorted(path.name for path in out.iterdir()) == [".lock", "results.json", "superb.json"]
    no_traceback(full)


# --- trials: only the current grid's -------------------------------------------------------------------

def test_a_leftover_trial_of_another_grid_is_never_chosen(tmp_path):
    from s3prl_star.superb.results import MissingOutput, read_task

    out, task = tmp_path / "out", TASKS["ks"]
    for name, dev, test in (("lr0.0001", 0.5, 0.4), ("lr0.001", 0.9, 0.8)):  # lr0.001: better on dev, leftover
        trial = out / "ks" / name
        trial.mkdir(parents=True)
        (trial / "train.done").write_text("")
        (trial / "log.log").write_text(f"New best on dev at step 2: {dev}\ntest at step 2: {test}\n")
    result = read_task(out, task, [1e-4])
    assert result.chosen == "ks/lr0.0001" and result.metrics == {"KS_acc": pytest.approx(40.0)}
    assert "KS: lr0.001 left out, not among this run's learning rates (lr0.0001)" in result.notes
    (out / "ks" / "inputs.json").write_text(json.dumps({"learning_rates": [1e-4]}))  # `score OUT` reads the record
    assert read_task(out, task).chosen == "ks/lr0.0001"
    with pytest.raises(MissingOutput, match=r"no run lr1e-05 \(its learning rates: lr1e-05, lr0.0001, lr0.001\)"):
        read_task(out, task, [1e-5, 1e-4, 1e-3])


# --- slow: reruns of a finished task, a failed run --------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_rerun_with_other_inputs_is_refused_naming_them_and_redo_keeps_the_old_runs(tmp_path, tiny_student_checkpoint):
    student = tmp_path / "student.pt"
    shutil.copyfile(tiny_student_checkpoint, student)
    entry = speech_commands_entry(tmp_path / "speech_commands")
    data = write_data(tmp_path / "data.yaml", {"ks": entry})
    longer = tmp_path / "longer.yaml"
    longer.write_text(data.read_text().replace("total_steps=4", "total_steps=8"))
    assert "config.runner.total_steps=4" in QUICK
    out, folder = tmp_path / "out", tmp_path / "out" / "ks"

    def run(*extra: str, data_file: Path = data, tasks: str = "ks"):
        result = superb("-u", "star_hubert", "-k", str(student), "--data", str(data_file), "--tasks", tasks,
                        "-o", str(out), *extra)
        no_traceback(result)
        return result

    def refused(result, change: str) -> None:
        reason = f"{folder} was made with other inputs: {change}; `--redo ks` runs it again (its folder is kept, renamed)"
        assert result.returncode == 1 and f"superb: KS: refused, {reason}\n" in result.stdout, result.stdout[-3000:]
        assert ": training" not in result.stdout
        assert json.loads((out / "results.json").read_text())["tasks"]["KS"] == {"status": "refused", "reason": reason}
        assert (folder / "result.json").read_text() == result_json  # the earlier result is kept, not reported

    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result_json = (folder / "result.json").read_text()
    record = json.loads((folder / "inputs.json").read_text())
    assert record["upstream_content_sha256"] == {"-k": sha256(student)} and record["learning_rates"] == [1e-4]
    assert record["data"] == {key: value for key, value in entry.items() if key != "overrides"}

    again = run()
    assert again.returncode == 0 and f"KS: finished in an earlier run ({folder / 'result.json'})" in again.stdout

    refused(run(data_file=longer), "DATA.yaml overrides 'config.runner.total_steps=4' -> 'config.runner.total_steps=8'")

    original, digest = student.read_bytes(), sha256(student)
    corrupt_middle(student)  # other weights at the same path
    refused(run(), f"the content of the -k file (sha256 {digest[:12]}… -> {sha256(student)[:12]}…)")
    student.write_bytes(original)

    refused(run("--lr-search"), "the learning rates (--lr-search, config.optimizer.lr) [0.0001] -> [1e-05, 0.0001, 0.001]")

    # A damaged result.json: named for a task not in --tasks, read again from the runs (no training) for one in it.
    (folder / "result.json").write_text(result_json[: len(result_json) // 2])
    other = run(tasks="asr")
    assert other.returncode == 0, other.stdout
    reported = json.loads((out / "results.json").read_text())["tasks"]["KS"]
    assert reported["status"] == "not run" and reported["reason"].startswith(f"not in --tasks; {folder / 'result.json'}: not JSON (")
    reread = run()
    assert reread.returncode == 0 and f"KS: {folder / 'result.json'}: not JSON (" in reread.stdout
    assert "reading its result again from its runs" in reread.stdout and ": training" not in reread.stdout
    assert json.loads((folder / "result.json").read_text())["metrics"] == json.loads(result_json)["metrics"]

    redone = run("--redo", "ks", data_file=longer)
    assert redone.returncode == 0, redone.stdout[-3000:] + redone.stderr[-3000:]
    assert f"KS: --redo: {folder} moved to {out / 'ks.old-1'}" in redone.stdout and "KS/lr0.0001: training" in redone.stdout
    assert (out / "ks.old-1" / "result.json").is_file() and (out / "ks.old-1" / "lr0.0001" / "states-4.ckpt").is_file()
    assert (folder / "lr0.0001" / "states-8.ckpt").is_file()
    assert "total_steps=8" in json.loads((folder / "inputs.json").read_text())["common_overrides"]


@pytest.mark.slow
def test_a_failed_run_is_reported_with_its_exception_not_its_last_progress_bar(tmp_path):
    """The test set's audio cannot be decoded: the training fails at its first test evaluation, and its
    stderr ends with the progress bar tqdm redraws after the traceback."""
    entry = speech_commands_entry(tmp_path / "speech_commands")
    for wav in Path(entry["datarc.speech_commands_test_root"]).rglob("*.wav"):
        wav.write_bytes(b"not audio")
    out = tmp_path / "out"
    result = superb("-u", "fbank", "--data", str(write_data(tmp_path / "data.yaml", {"ks": entry})), "--tasks", "ks",
                    "-o", str(out))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    log = out / "ks" / "lr0.0001" / "train.err"
    from s3prl_star.processes import PROGRESS, last_line

    assert PROGRESS.search(last_line(log.read_text())), "the run's log does not end with a progress bar"
    error = "soundfile.LibsndfileError: Error opening "
    line = next(line for line in result.stdout.splitlines() if line.startswith("superb: KS: failed, "))
    assert f"its output: {log}: {error}" in line and "Format not recognised" in line, line
    reason = json.loads((out / "results.json").read_text())["tasks"]["KS"]["reason"]
    assert f"its output: {log}: {error}" in reason and not PROGRESS.search(reason), reason
