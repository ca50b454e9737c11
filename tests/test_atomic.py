"""Atomic writes: the previous file survives a failed write, and modes are those of a normal write."""
import os

import pytest

from s3prl_star.atomic import save_atomic, write_atomically


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "states-1.ckpt"
    save_atomic({"step": 1}, path)

    def crash(temporary):
        open(temporary, "wb").write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, crash)
    assert [p.name for p in tmp_path.iterdir()] == ["states-1.ckpt"]
    import torch

    assert torch.load(path)["step"] == 1


def test_modes_follow_the_umask_or_the_replaced_file(tmp_path):
    new = tmp_path / "new.csv"
    write_atomically(new, lambda temporary: open(temporary, "w").write("x"))
    mask = os.umask(0)
    os.umask(mask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600

    script = tmp_path / "hub.py"
    script.write_text("print()")
    script.chmod(0o755)
    write_atomically(script, lambda temporary: open(temporary, "w").write("print(1)"))
    assert script.stat().st_mode & 0o777 == 0o755 and script.read_text() == "print(1)"
