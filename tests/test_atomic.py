"""The one atomic-write mechanism: the target holds the old or the new content, never a mix."""

from __future__ import annotations

import pytest

from corrdiff_xr._atomic import atomic_path, discard, remove_stale, write_bytes


def _hidden(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_file_is_replaced_only_when_the_write_succeeds(tmp_path):
    target = tmp_path / "out.json"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as staged:
        staged.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert _hidden(tmp_path) == []
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert _hidden(tmp_path) == []


def test_a_directory_store_is_swapped_whole(tmp_path):
    target = tmp_path / "store.zarr"
    with atomic_path(target, fsync=True) as staged:
        staged.mkdir()
        (staged / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as staged:
        staged.mkdir()
        (staged / "b").write_text("2")
        raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["a"]
    with atomic_path(target) as staged:
        staged.mkdir()
        (staged / "b").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b"]  # nothing of the old store survives
    assert _hidden(tmp_path) == []


def test_discard_and_stale_leftovers(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (tmp_path / ".x.tmp-0123abcd").mkdir()
    (tmp_path / ".y.old-0123abcd").write_text("old")
    (tmp_path / ".hidden-config").write_text("not ours")
    remove_stale(tmp_path)
    assert _hidden(tmp_path) == [".hidden-config"]
    discard(keep)
    assert not keep.exists() and _hidden(tmp_path) == [".hidden-config"]
