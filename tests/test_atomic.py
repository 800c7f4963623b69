"""The one atomic-write mechanism: the target holds the old or the new content, never a mix."""

from __future__ import annotations

import os

import pytest

from corrdiff_xr._atomic import (
    atomic_contents,
    atomic_path,
    discard,
    remove_leftovers,
    remove_stale,
    write_bytes,
)


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


def test_a_directorys_entries_are_replaced_together_and_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("old a")
    (out / "b.png").write_text("old b")
    (out / "store").mkdir()
    (out / "store" / "chunk").write_text("old chunk")
    (out / "keep.txt").write_text("not one of the names")
    names = ("a.json", "b.png", "store")
    with pytest.raises(OSError, match="disk full"), atomic_contents(out, names) as staged:
        (staged / "a.json").write_text("new a")
        raise OSError(28, "disk full")
    assert (out / "a.json").read_text() == "old a" and (out / "b.png").exists()
    assert (out / "store" / "chunk").read_text() == "old chunk"
    assert _hidden(out) == []
    with atomic_contents(out, names) as staged:
        (staged / "a.json").write_text("new a")
        (staged / "store").mkdir()
        (staged / "store" / "other").write_text("new chunk")
    assert (out / "a.json").read_text() == "new a"
    assert not (out / "b.png").exists()  # a named entry not built this time: removed
    assert [p.name for p in (out / "store").iterdir()] == ["other"]
    assert (out / "keep.txt").read_text() == "not one of the names"
    assert _hidden(out) == []


def test_replace_false_keeps_whatever_appeared_at_the_target_meanwhile(tmp_path):
    # a file another run finished, a dangling link, a non-empty directory: never replaced
    (tmp_path / "file").write_bytes(b"theirs")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "a").write_text("theirs")
    for name, make in (("file", "write"), ("link", "write"), ("store", "mkdir"), ("file", "mkdir")):
        with pytest.raises(FileExistsError), atomic_path(tmp_path / name, replace=False) as staged:
            staged.mkdir() if make == "mkdir" else staged.write_bytes(b"mine")
    assert (tmp_path / "file").read_bytes() == b"theirs"
    assert os.readlink(tmp_path / "link") == str(tmp_path / "nowhere")
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["a"]
    assert _hidden(tmp_path) == []
    (tmp_path / "empty").mkdir()  # absent or an empty directory: moved in
    for name in ("new", "empty"):
        with atomic_path(tmp_path / name, replace=False) as staged:
            staged.mkdir()
            (staged / "b").write_text("mine")
        assert [p.name for p in (tmp_path / name).iterdir()] == ["b"]
    write_bytes(tmp_path / "new.json", b"mine")
    assert (tmp_path / "new.json").read_bytes() == b"mine" and _hidden(tmp_path) == []


def test_remove_leftovers_removes_only_the_targets_temporaries(tmp_path):
    (tmp_path / ".out.zarr.tmp-0123abcd").mkdir()
    (tmp_path / ".out.zarr.old-0123abcd").write_text("old")
    (tmp_path / ".other.zarr.tmp-0123abcd").mkdir()  # another output's: maybe a live run's
    (tmp_path / ".out.zarr.lock").write_text("{}")
    remove_leftovers(tmp_path / "out.zarr")
    assert _hidden(tmp_path) == [".other.zarr.tmp-0123abcd", ".out.zarr.lock"]
