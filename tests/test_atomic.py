"""Atomic writes: all or nothing, and the final file readable like a plainly created one."""
import os
import stat

import pytest

from zoneout.atomic import FILE_MODE, atomic_write_bytes, atomic_write_text


def test_final_file_gets_the_umask_mode_not_the_private_temp_mode(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = tmp_path / "sub" / "summary.json"
    atomic_write_text(path, "{}\n")
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "metrics.csv"
    atomic_write_text(path, "old\n")

    def broken(handle):
        handle.write(b"half of a new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, broken)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
