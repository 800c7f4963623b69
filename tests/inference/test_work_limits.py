"""Small numbers asking for unbounded work are refused before anything is allocated."""

from __future__ import annotations

import itertools
import random

import pytest

from corrdiff_xr import cli
from corrdiff_xr._constraints import MAX_BLOCK_BYTES, MAX_BLOCKS, MAX_MEMBERS
from corrdiff_xr.config import SettingError
from corrdiff_xr.inference.graph import _Axis, check_size


def _scan(chunks, lo, hi):
    """Every chunk overlapping [lo, hi), by the plain scan the bisection replaced."""
    bounds = list(itertools.accumulate(chunks, initial=0))
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        s, e = max(a, lo), min(b, hi)
        if s < e:
            out.append((i, slice(s - a, e - a), slice(s - lo, e - lo)))
    return out


def test_chunk_lookup_by_bisection_finds_what_a_scan_of_every_chunk_finds():
    rng = random.Random(0)
    for _ in range(200):
        chunks = [rng.choice([0, 1, 1, 2, 3, 7]) for _ in range(rng.randint(1, 12))]
        axis, n = _Axis(chunks), sum(chunks)
        for lo in range(n + 1):
            for hi in range(lo, n + 2):
                assert axis.overlaps(lo, hi) == _scan(chunks, lo, hi), (chunks, lo, hi)


def test_a_graph_of_too_many_blocks_is_refused_from_the_sizes_alone():
    # 10**14 blocks: counting them must not build anything (this would take hours)
    with pytest.raises(SettingError) as info:
        check_size(
            members=(10**5, 1),
            times=(10**9, 1),
            ych=(16,),
            xch=(16,),
            channels=4,
            whole_mean=False,
        )
    text = str(info.value)
    assert text.startswith("members=100000, chunks['member']=1, chunks['time']=1: make ")
    assert f"{10**14} block tasks" in text and f"more than the {MAX_BLOCKS}" in text


def test_a_block_larger_than_one_task_may_hold_is_refused_naming_its_shape():
    # 8 members x 1 time x 4 targets x 8192 x 8192 float32 = 8 GiB
    with pytest.raises(SettingError, match=r"a block of 8 members x 1 times x 4 targets x 8192"):
        check_size(
            members=(8, 8), times=(3, 1), ych=(8192,), xch=(8192,), channels=4, whole_mean=False
        )
    # blocks of 512 x 512, but the whole-domain mean of 3 times is 3 GiB
    with pytest.raises(SettingError, match=r"a time chunk's mean of 3 times x 4 targets x 8192"):
        check_size(
            members=None,
            times=(3, 3),
            ych=(512,) * 16,
            xch=(512,) * 16,
            channels=4,
            whole_mean=True,
        )
    # the same without the whole-domain mean fits; so does exactly the limit
    check_size(
        members=None, times=(3, 3), ych=(512,) * 16, xch=(512,) * 16, channels=4, whole_mean=False
    )
    side = int((MAX_BLOCK_BYTES // 16) ** 0.5)
    check_size(members=(1, 1), times=(1, 1), ych=(side,), xch=(side,), channels=4, whole_mean=False)


@pytest.mark.parametrize("option", ["--members", "--batch-size"])
def test_generate_refuses_a_member_count_beyond_the_limit_as_it_parses(option, tmp_path, capsys):
    argv = ["generate", "--data", str(tmp_path / "none.zarr"), "--checkpoint", "none"]
    assert cli.main([*argv, "--zarr", str(tmp_path / "o.zarr"), option, str(10**7)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in err and f"<= {MAX_MEMBERS}" in err and "10000000" in err
    assert not (tmp_path / "o.zarr").exists()
