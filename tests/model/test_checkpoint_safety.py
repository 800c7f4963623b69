"""Loading checkpoints is safe against malformed and hostile files.

Every hostile file of ``benchmarks/_faults_hostile.py`` (lying headers, wrong shapes and
dtype labels, missing and extra tensors, truncated files, ``..`` / absolute / link / device
archive members, declared-size and decompression bombs, absurd ``args.json``) is refused with
a :class:`CorrDiffError` naming the file and the culprit; good files still load bit for bit;
and the two cases of the hostile trial stay within ``2 x file size + 100 MB`` of peak memory
above what importing the libraries holds (``VmHWM`` minus ``VmRSS`` after the imports, in a
fresh subprocess: the libraries alone take ~300 MB, more with pyarrow installed).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from corrdiff_xr.errors import CorrDiffError
from corrdiff_xr.model import CorrDiff, import_mdlus, read_checkpoint_header
from corrdiff_xr.model.mdlus import MdlusError, read_mdlus
from corrdiff_xr.model.safety import CheckpointError, check_tensors


def _load_hostile():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "_faults_hostile.py"
    if str(path.parent) not in sys.path:  # the campaigns import their shared summary
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location("_faults_hostile", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


hostile = _load_hostile()
CASES = {case.name: case for case in hostile.CASES}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def good(workdir) -> Path:
    return hostile.good_checkpoint(workdir)


def _stored(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)


def _assert_loads_bit_for_bit(path: Path) -> None:
    stored = _stored(path)
    state = CorrDiff.load(path).state_dict()
    assert set(state) == set(stored)
    for key, value in stored.items():
        assert state[key].dtype == torch.float32
        assert torch.equal(state[key], value.float()), key


def _assert_good_mdlus_reads_bit_for_bit(workdir: Path) -> None:
    sd = read_mdlus(hostile.good_mdlus(workdir)).state_dict
    ref = hostile.residual_state_dict()
    assert set(sd) == set(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


# -- every hostile file ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_file_is_refused_naming_the_culprit(name, workdir):
    case = CASES[name]
    path = case.build(workdir, workdir / f"{name}.bad")
    with pytest.raises(CorrDiffError) as info:
        hostile.load(case.kind, path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(case.culprit, message), message
    assert isinstance(info.value, MdlusError if case.kind == "mdlus" else CheckpointError)
    if case.kind == "checkpoint":  # the file it was made from still loads, unchanged
        _assert_loads_bit_for_bit(hostile.good_checkpoint(workdir))
    else:
        _assert_good_mdlus_reads_bit_for_bit(workdir)


def test_read_checkpoint_header_refuses_what_load_refuses(workdir):
    path = CASES["header_img_shape_string"].build(workdir, workdir / "h.bad")
    with pytest.raises(CheckpointError, match=r"img_shape must be an integer, got '16'"):
        read_checkpoint_header(path)


# -- peak memory of the hostile trial's two files -------------------------------------------
@pytest.mark.parametrize("name", ["header_model_channels_3200", "zip_declares_3gb_member"])
def test_peak_memory_of_a_hostile_file_stays_under_twice_its_size_plus_100_mb(name, workdir):
    case = CASES[name]
    path = case.build(workdir, workdir / f"{name}.mem")
    result = hostile.measure(case.kind, path, timeout=120)
    assert result["refused"], result
    assert re.search(case.culprit, result["error"]), result
    file_mb = path.stat().st_size / 2**20
    assert result["extra_mem_mb"] < 2 * file_mb + 100, (result, file_mb)


# -- good files -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_floating_weights_stored_as_f32_f16_or_bf16_load_into_fp32_bit_for_bit(
    dtype, good, tmp_path
):
    path = hostile.with_tensors(
        good,
        tmp_path / "m.safetensors",
        lambda t: t.update({k: v.to(dtype) for k, v in t.items()}),
    )
    _assert_loads_bit_for_bit(path)


def test_storage_dtypes_integer_buffers_only_as_themselves_floats_as_f32_f16_bf16():
    expected = {"steps": ((3,), "I64"), "weight": ((2, 2), "F32")}
    for ok in ("F32", "F16", "BF16"):
        check_tensors(expected, {"steps": ((3,), "I64"), "weight": ((2, 2), ok)}, source="f")
    for bad_steps, bad_weight in (
        ("I32", "F32"),
        ("F32", "F32"),
        ("I64", "I16"),
        ("I64", "F64"),
    ):
        culprit = "steps" if bad_steps != "I64" else "weight"
        found = {"steps": ((3,), bad_steps), "weight": ((2, 2), bad_weight)}
        with pytest.raises(CheckpointError, match=rf"f: parameter '{culprit}' is stored as"):
            check_tensors(expected, found, source="f")


def _tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    return hostile.write_tar(path, files, mode="w:gz")


@pytest.mark.parametrize(
    "writer",
    [
        hostile.write_zip,
        lambda p, f: hostile.write_zip(p, f, compression=zipfile.ZIP_DEFLATED),
        hostile.write_tar,
        _tar_gz,
    ],
    ids=["zip", "zip-deflated", "tar", "tar-gz"],
)
def test_good_mdlus_archives_of_every_layout_read_bit_for_bit(writer, tmp_path):
    path = writer(tmp_path / "good.mdlus", hostile.mdlus_files())
    sd = read_mdlus(path).state_dict
    ref = hostile.residual_state_dict()
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_a_residual_mdlus_imports_with_our_weights_bit_for_bit(workdir):
    model = import_mdlus(None, hostile.good_mdlus(workdir), in_channels=3)
    ours = hostile.tiny_model().state_dict()
    got = model.state_dict()
    keys = [k for k in ours if k.startswith("residual.")]
    assert keys and all(torch.equal(got[k], ours[k]) for k in keys)
    assert model.edm_config.hr_mean_conditioning
