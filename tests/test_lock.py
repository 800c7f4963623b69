"""One writer per output: a second live run is refused naming the first; a dead one's lock is taken."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from corrdiff_xr._lock import OutputLockedError, lock_path, output_lock
from tests._lock_helpers import hold_lock, release


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    target = tmp_path / "out.zarr"
    holder = hold_lock(target)
    try:
        with pytest.raises(OutputLockedError) as err, output_lock(target, what="--zarr store"):
            pass
        text = str(err.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in text and "started 20" in text
        assert "--zarr store is being written by another run" in text and "\n" not in text
    finally:
        release(holder)
    assert not lock_path(target).exists()  # released: the lock file goes with it
    with output_lock(target):
        assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path):
    target = tmp_path / "out.zarr"
    holder = hold_lock(target)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(target).exists()  # a kill leaves the file; the kernel drops the flock
    with pytest.warns(UserWarning, match=f"left by a run that is gone \\(pid {holder.pid} "):
        with output_lock(target):
            assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()
    assert not lock_path(target).exists()


def test_a_process_may_nest_its_own_lock_and_folders_made_for_it_go(tmp_path):
    target = tmp_path / "new" / "dir" / "out.nc"
    with output_lock(target), output_lock(target):
        assert lock_path(target).exists()
    assert not (tmp_path / "new").exists()  # nothing was written: no empty folders left


def test_a_link_at_the_lock_path_is_refused(tmp_path):
    target = tmp_path / "out.zarr"
    lock_path(target).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputLockedError, match="is a symbolic link"), output_lock(target):
        pass
    assert not (tmp_path / "elsewhere").exists()
