"""Hostile checkpoint files: every one must be refused, each with bounded peak memory.

Builds malformed corrdiff_xr checkpoints (safetensors + JSON header) and PhysicsNeMo
``.mdlus`` archives from a tiny real model (:data:`corrdiff_xr.testing.TINY_NETWORK`) and
loads each in a fresh subprocess (``CorrDiff.load`` / ``import_mdlus``), recording whether it
was refused with a :class:`~corrdiff_xr.errors.CorrDiffError` and the subprocess's peak
resident memory (``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` would inherit the parent's
high-water mark through fork + exec). The target is a peak under ``2 x file size + 300 MB``
for every file; the interpreter with torch imported already holds ~265 MB of it.

:data:`CASES` is also what ``tests/test_checkpoint_safety.py`` runs in-process: each case
names a regex its error must match (the culprit: tensor, key, member or limit).

Usage::

    python benchmarks/_faults_hostile.py [--json OUT.json]   # or run(workdir) from faults.py
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from _faults_common import finish, summary

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 24)
BUDGET_MB = 100.0  # allowance on top of twice the file size, above the imported libraries


# -- good files -----------------------------------------------------------------------------
def tiny_model():
    """A tiny CorrDiff (3 inputs, 2 targets, both networks) with O(1) random weights."""
    from corrdiff_xr.codec import Codec
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.testing import TINY_NETWORK

    stats = {n: (1.0, 2.0) for n in ("a", "b", "s", "t", "u")}
    codec = Codec(inputs=("a", "b"), targets=("t", "u"), static=("s",), stats=stats)
    g = torch.Generator().manual_seed(0)
    model = CorrDiff(
        codec,
        img_shape=SHAPE,
        regression_network=dataclasses.replace(TINY_NETWORK, embedding_type="zero"),
        residual_network=TINY_NETWORK,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def good_checkpoint(workdir: Path) -> Path:
    """The tiny model saved by ``CorrDiff.save`` (cached in ``workdir``)."""
    path = workdir / "good.safetensors"
    if not path.exists():
        tiny_model().save(path)
    return path


def _reference_names(sd: dict[str, torch.Tensor], prefix: str, height: int) -> dict:
    """Our ``{prefix}enc.L0_...`` keys spelled as PhysicsNeMo's ``model.enc.16x16_...``."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split(".")
        if parts[0] in ("enc", "dec") and parts[1].startswith("L"):
            level, rest = parts[1][1:].split("_", 1)
            parts[1] = f"{height >> int(level)}x{height >> int(level)}_{rest}"
        out["model." + ".".join(parts)] = value
    return out


def residual_args() -> dict:
    """``EDMPrecondSuperResolution`` arguments of the tiny model's residual network."""
    from corrdiff_xr.config import EDMConfig
    from corrdiff_xr.testing import TINY_NETWORK as net

    return {
        "img_resolution": list(SHAPE),
        "img_in_channels": 5
        + net.N_grid_channels,  # inputs + regression mean, + positional channels
        "img_out_channels": 2,
        "model_type": "SongUNetPosEmbd",
        "sigma_data": EDMConfig().sigma_data,
        "model_channels": net.model_channels,
        "channel_mult": list(net.channel_mult),
        "channel_mult_emb": net.channel_mult_emb,
        "channel_mult_noise": net.channel_mult_noise,
        "num_blocks": net.num_blocks,
        "attn_resolutions": list(net.attn_resolutions),
        "dropout": net.dropout,
        "resample_filter": list(net.resample_filter),
        "embedding_type": net.embedding_type,
        "bottleneck_attention": net.bottleneck_attention,
        "gridtype": net.gridtype,
        "N_grid_channels": net.N_grid_channels,
    }


def torch_bytes(obj, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def residual_state_dict() -> dict[str, torch.Tensor]:
    """The tiny model's residual weights under the reference's names."""
    return _reference_names(tiny_model().state_dict(), "residual.net.", SHAPE[0])


def mdlus_files(args: dict | None = None, model_pt: bytes | None = None) -> dict[str, bytes]:
    """The three members of a ``.mdlus`` archive (the tiny residual unless overridden)."""
    body = {"__name__": "EDMPrecondSuperResolution", "__module__": "x"}
    return {
        "args.json": json.dumps({**body, "__args__": args or residual_args()}).encode(),
        "metadata.json": b'{"mdlus_file_version": "0.1.0"}',
        "model.pt": model_pt if model_pt is not None else torch_bytes(residual_state_dict()),
    }


def write_zip(path: Path, files, *, compression=zipfile.ZIP_STORED) -> Path:
    """``files``: {name: bytes} or [(ZipInfo or name, bytes)]; names may repeat."""
    items = files.items() if isinstance(files, dict) else files
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compression) as z:
        warnings.simplefilter("ignore")  # duplicate names are wanted in some cases
        for name, data in items:
            z.writestr(name, data, compress_type=compression, compresslevel=1)
    return path


def write_tar(path: Path, files, *, mode: str = "w", extra=()) -> Path:
    """``files``: {name: bytes}; ``extra``: TarInfo headers without data (links, devices)."""
    kw = {"compresslevel": 1} if mode.endswith(("gz", "bz2")) else {}
    with tarfile.open(path, mode, **kw) as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_mdlus(workdir: Path) -> Path:
    """The tiny residual as a PhysicsNeMo zip ``.mdlus`` (import with ``in_channels=3``)."""
    path = workdir / "good.mdlus"
    if not path.exists():
        write_zip(path, mdlus_files())
    return path


# -- editing files --------------------------------------------------------------------------
def split_safetensors(path: Path) -> tuple[dict, bytes]:
    """(safetensors JSON header, tensor bytes) of a file."""
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join_safetensors(path: Path, header: dict, body: bytes) -> Path:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def with_config(good: Path, out: Path, change: Callable[[dict], object]) -> Path:
    """``good`` with its corrdiff_xr header changed by ``change`` (in place, or returned)."""
    header, body = split_safetensors(good)
    cfg = json.loads(header["__metadata__"]["corrdiff_xr"])
    new = change(cfg)
    text = new if isinstance(new, str) else json.dumps(cfg if new is None else new)
    header["__metadata__"]["corrdiff_xr"] = text
    return join_safetensors(out, header, body)


def with_tensors(good: Path, out: Path, change: Callable[[dict], None]) -> Path:
    """``good`` with its tensors {name: tensor} changed by ``change`` (header kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    change(tensors)
    save_file(tensors, str(out), metadata=meta)
    return out


def with_safetensors_header(good: Path, out: Path, change: Callable[[dict], None]) -> Path:
    """``good`` with its safetensors header (dtypes, shapes, offsets) changed, data kept."""
    header, body = split_safetensors(good)
    change(header)
    return join_safetensors(out, header, body)


def _fp16(good: Path, out: Path) -> Path:
    return with_tensors(good, out, lambda t: t.update({k: v.half() for k, v in t.items()}))


def patch_zip_member(path: Path, name: str, *, size: int, crc=None, method=None) -> Path:
    """Make the zip's local and central headers of member ``name`` declare ``size`` bytes
    (and the given CRC-32 and compression method)."""
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)

    def patch(at: int, method_at: int, crc_at: int, size_at: int) -> None:
        struct.pack_into("<I", blob, at + size_at, size)
        if crc is not None:
            struct.pack_into("<I", blob, at + crc_at, crc)
        if method is not None:
            struct.pack_into("<H", blob, at + method_at, method)

    patch(info.header_offset, 8, 14, 22)
    end = blob.rfind(b"PK\x05\x06")
    pos = struct.unpack_from("<I", blob, end + 16)[0]  # central directory offset
    while blob[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<HHH", blob, pos + 28)
        if blob[pos + 46 : pos + 46 + n] == name.encode():
            patch(pos, 10, 16, 24)
        pos += 46 + n + m + k
    path.write_bytes(bytes(blob))
    return path


def deflated_zeros(n_chunks: int, chunk: int = 16 << 20) -> tuple[bytes, int]:
    """(raw deflate stream of ``n_chunks * chunk`` zero bytes, its CRC-32), made in a second:
    after a full flush the encoder starts afresh, so one segment repeated decodes to them all."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    segment = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(n_chunks):
        crc = zlib.crc32(zeros, crc)
    return segment * n_chunks + c.flush(), crc


def _ref_sd_with(key: str, value: torch.Tensor) -> bytes:
    return torch_bytes({**residual_state_dict(), key: value})


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __reduce__(self):
        return (
            pathlib.Path.touch,
            (pathlib.Path(tempfile.gettempdir(), "corrdiff_pwned"),),
        )


def _nested_bomb() -> bytes:
    """A torch-like zip whose data record is a deflated 64 MB of zeros."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({}), compress_type=zipfile.ZIP_STORED)
        z.writestr("archive/data/0", bytes(64 << 20), compresslevel=1)
    return inner.getvalue()


def _tar_link(name: str, kind: bytes, target: str = "/etc/passwd") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _zip_link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, (0o120777 << 16)  # S_IFLNK | rwx
    return info


def _args(**changes) -> bytes:
    return json.dumps(
        {
            "__name__": "EDMPrecondSuperResolution",
            "__args__": {**residual_args(), **changes},
        }
    ).encode()


# -- the cases ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    """A hostile file: ``build(workdir, out) -> path``; ``kind`` is checkpoint or mdlus."""

    name: str
    kind: str
    culprit: str  # regex the error message must match
    build: Callable[[Path, Path], Path]


def _ck(name: str, culprit: str, build: Callable[[Path, Path], Path]) -> Case:
    return Case(name, "checkpoint", culprit, lambda w, out: build(good_checkpoint(w), out))


def _md(name: str, culprit: str, files: Callable[[], object], writer=write_zip, **kw) -> Case:
    return Case(name, "mdlus", culprit, lambda w, out: writer(out, files(), **kw))


def _cfg(change: Callable[[dict], object]) -> Callable[[Path, Path], Path]:
    return lambda good, out: with_config(good, out, change)


def _set(cfg: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = value


def _codecless(cfg: dict) -> None:
    cfg["codec"] = None
    cfg["in_channels"] = -3


def _extra_target(cfg: dict) -> None:
    cfg["codec"]["targets"].append("v")
    cfg["codec"]["stats"]["v"] = [0.0, 1.0]
    cfg["out_channels"] = 3


def _relabel(dtype: str, key: str = "residual.net.map_layer0.weight"):
    def build(good: Path, out: Path) -> Path:
        _fp16(good, out)
        return with_safetensors_header(out, out, lambda h: h[key].update(dtype=dtype))

    return build


def _swap_shape(header: dict) -> None:
    entry = header["residual.net.map_layer0.weight"]
    entry["shape"] = entry["shape"][::-1]


def _truncated(good: Path, out: Path) -> Path:
    out.write_bytes(good.read_bytes()[:-100])
    return out


def _declared_3gb(workdir: Path, out: Path) -> Path:
    """The hostile trial's file: a 3 MB zip whose model.pt inflates to 3 GB of zeros."""
    stream, crc = deflated_zeros(192)
    write_zip(out, mdlus_files(model_pt=stream))  # stored, then relabelled as deflated
    return patch_zip_member(out, "model.pt", size=3 << 30, crc=crc, method=zipfile.ZIP_DEFLATED)


def _lying_small(workdir: Path, out: Path) -> Path:
    """args.json inflates to 64 MB of zeros but declares 1000 bytes."""
    files = {**mdlus_files(), "args.json": bytes(64 << 20)}
    write_zip(out, files, compression=zipfile.ZIP_DEFLATED)
    return patch_zip_member(out, "args.json", size=1000)


def _truncate_file(build: Callable[[Path, Path], Path], keep: float):
    def cut(workdir: Path, out: Path) -> Path:
        build(workdir, out)
        blob = out.read_bytes()
        out.write_bytes(blob[: int(len(blob) * keep)])
        return out

    return cut


CHECKPOINT_CASES = [
    _ck("header_model_channels_3200", r"describes [\d,]+ parameters.*holds only",
        _cfg(lambda c: _set(c, "residual_network.model_channels", 3200))),
    _ck("header_model_channels_string", r"residual_network\.model_channels.*integer",
        _cfg(lambda c: _set(c, "residual_network.model_channels", "16"))),
    _ck("header_num_blocks_huge", r"num_blocks=1000000 is outside",
        _cfg(lambda c: _set(c, "regression_network.num_blocks", 10**6))),
    _ck("header_levels_huge", r"channel_mult has 100 items",
        _cfg(lambda c: _set(c, "regression_network.channel_mult", [1] * 100))),
    _ck("header_img_shape_huge", r"img_shape=1000000000 is outside",
        _cfg(lambda c: _set(c, "img_shape", [10**9, 24]))),
    _ck("header_img_shape_string", r"img_shape must be an integer",
        _cfg(lambda c: _set(c, "img_shape", ["16", 24]))),
    _ck("header_negative_channels", r"in_channels=-3 is outside", _cfg(_codecless)),
    _ck("header_sampler_steps_huge", r"sampler\.num_steps: 1000000000 is not an integer in",
        _cfg(lambda c: {**c, "format_version": 3, "sampler": {"num_steps": 10**9}})),
    _ck("header_sigma_data_nan", r"edm\.sigma_data.*finite",
        _cfg(lambda c: _set(c, "edm.sigma_data", float("nan")))),
    _ck("header_extra_target", r"parameter '[\w.]+' has shape .* the model expects",
        _cfg(_extra_target)),
    _ck("header_format_version_string", r"format_version must be an integer",
        _cfg(lambda c: _set(c, "format_version", "1"))),
    _ck("header_not_an_object", r"header must be a JSON object", _cfg(lambda c: [c])),
    _ck("header_not_json", r"header is not valid JSON", _cfg(lambda c: "{not json")),
    _ck("header_deeply_nested", r"header is not valid JSON", _cfg(lambda c: "[" * 200_000)),
    _ck("header_huge", r"header is larger than", _cfg(lambda c: {**c, "pad": "x" * (5 << 20)})),
    _ck("dtype_f16_labelled_i16", r"'residual.net.map_layer0.weight' is stored as I16.*BF16 / F16 / F32",
        _relabel("I16")),
    _ck("dtype_f16_labelled_u16", r"'residual.net.map_layer0.weight' is stored as U16", _relabel("U16")),
    _ck("shape_relabelled", r"'residual.net.map_layer0.weight' has shape \(16, 64\)",
        lambda g, o: with_safetensors_header(g, o, _swap_shape)),
    _ck("tensor_missing", r"missing \['residual.net.map_layer0.bias'\]",
        lambda g, o: with_tensors(g, o, lambda t: t.pop("residual.net.map_layer0.bias"))),
    _ck("tensor_extra", r"unexpected \['residual.net.extra'\]",
        lambda g, o: with_tensors(g, o, lambda t: t.update({"residual.net.extra": torch.zeros(3)}))),
    _ck("tensor_offsets_beyond_file", r"not a safetensors checkpoint",
        lambda g, o: with_safetensors_header(
            g, o, lambda h: h["residual.net.map_layer0.weight"].update(data_offsets=[0, 10**9]))),
    _ck("file_truncated", r"not a safetensors checkpoint", _truncated),
]  # fmt: skip

MDLUS_CASES = [
    Case("zip_declares_3gb_member", "mdlus", r"declare more than [\d,]+ bytes", _declared_3gb),
    Case("zip_member_lies_small", "mdlus", r"cannot read .*args.json", _lying_small),
    _md("zip_deflate_bomb", r"declare more than", lambda: {**mdlus_files(), "pad": bytes(64 << 20)},
        compression=zipfile.ZIP_DEFLATED),
    _md("tar_gz_bomb", r"hold more than", lambda: {**mdlus_files(), "pad": bytes(64 << 20)},
        writer=write_tar, mode="w:gz"),
    Case("tar_gz_pax_header_bomb", "mdlus", r"decompresses to more than",
         lambda w, out: _pax_bomb(out)),
    _md("nested_zip_bomb", r"record 'archive/data/0' is compressed",
        lambda: mdlus_files(model_pt=_nested_bomb())),
    _md("zip_dotdot_member", r"'../model.pt' points outside",
        lambda: [*mdlus_files().items(), ("../model.pt", b"x")]),
    _md("zip_absolute_member", r"'/args.json' has an absolute name",
        lambda: [("/args.json", b"{}"), *mdlus_files().items()]),
    _md("zip_symlink_member", r"'link' is a symbolic link",
        lambda: [*mdlus_files().items(), (_zip_link("link"), b"/etc/passwd")]),
    _md("zip_many_members", r"has 103 members",
        lambda: {**mdlus_files(), **{f"f{i}": b"" for i in range(100)}}),
    _md("zip_duplicate_member", r"holds model.pt twice",
        lambda: [*mdlus_files().items(), ("model.pt", b"x")]),
    _md("tar_dotdot_member", r"'../../etc/cron.d/x' points outside",
        lambda: {"../../etc/cron.d/x": b"x", **mdlus_files()}, writer=write_tar),
    _md("tar_absolute_member", r"'/etc/x' has an absolute name",
        lambda: {"/etc/x": b"x", **mdlus_files()}, writer=write_tar),
    _md("tar_symlink_member", r"'args.json' is a symbolic link", lambda: mdlus_files(),
        writer=write_tar, extra=[_tar_link("args.json", tarfile.SYMTYPE)]),
    _md("tar_hardlink_member", r"'model.pt' is a hard link", lambda: mdlus_files(),
        writer=write_tar, extra=[_tar_link("model.pt", tarfile.LNKTYPE)]),
    _md("tar_device_member", r"'dev' is a character device", lambda: mdlus_files(),
        writer=write_tar, extra=[_tar_link("dev", tarfile.CHRTYPE, "")]),
    Case("zip_truncated", "mdlus", r"truncated",
         _truncate_file(lambda w, out: write_zip(out, mdlus_files()), 0.6)),
    Case("tar_truncated", "mdlus", r"model.pt is not a readable torch state dict|truncated",
         _truncate_file(lambda w, out: write_tar(out, mdlus_files()), 0.6)),
    _md("args_not_utf8", r"args.json is not UTF-8", lambda: {**mdlus_files(), "args.json": b"\xff\xfe{}"}),
    _md("args_huge", r"args.json is larger than 1048576 bytes",
        lambda: {**mdlus_files(), "args.json": b" " * (2 << 20) + _args()}),
    _md("args_deeply_nested", r"args.json is not valid JSON",
        lambda: {**mdlus_files(), "args.json": b"[" * 200_000}),
    _md("args_model_channels_absurd", r"model_channels=1000000 is outside",
        lambda: {**mdlus_files(), "args.json": _args(model_channels=10**6)}),
    _md("args_model_channels_3200", r"describes [\d,]+ parameters.*holds only",
        lambda: {**mdlus_files(), "args.json": _args(model_channels=3200)}),
    _md("args_resolution_string", r"img_resolution must be",
        lambda: {**mdlus_files(), "args.json": _args(img_resolution="abc")}),
    _md("args_negative_channels", r"img_out_channels=-2 is outside",
        lambda: {**mdlus_files(), "args.json": _args(img_out_channels=-2)}),
    _md("weights_stride_trick", r"'model.big' is larger than its storage",
        lambda: mdlus_files(model_pt=_ref_sd_with("model.big", torch.zeros(1).expand(10**9)))),
    _md("weights_int16_labelled", r"'residual.net.map_layer0.weight' is stored as I16",
        lambda: mdlus_files(model_pt=_ref_sd_with(
            "model.map_layer0.weight", residual_state_dict()["model.map_layer0.weight"].to(torch.int16)))),
    _md("weights_legacy_torch_format", r"not in torch's zip format",
        lambda: mdlus_files(model_pt=torch_bytes({}, _use_new_zipfile_serialization=False))),
    _md("weights_pickle_payload", r"refused without running them",
        lambda: mdlus_files(model_pt=torch_bytes({"x": _Payload()}))),
]  # fmt: skip

CASES = CHECKPOINT_CASES + MDLUS_CASES


def _pax_bomb(out: Path) -> Path:
    """A tar.gz whose first header is a 64 MB pax record (tarfile reads it whole)."""
    with tarfile.open(out, "w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("args.json")
        info.pax_headers = {"comment": " " * (64 << 20)}
        tar.addfile(info, io.BytesIO())
    return out


# -- loading --------------------------------------------------------------------------------
def load(kind: str, path: str | Path):
    """What the hostile file is given to: ``CorrDiff.load`` or ``import_mdlus``."""
    from corrdiff_xr.model import CorrDiff, import_mdlus

    if kind == "checkpoint":
        return CorrDiff.load(path)
    return import_mdlus(None, path, in_channels=3)


_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[3])
from _faults_hostile import load
import corrdiff_xr.model
from corrdiff_xr.errors import CorrDiffError
with open("/proc/self/status") as f:  # what the interpreter and its libraries hold already
    base = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
try:
    load(sys.argv[1], sys.argv[2])
    error, refused = None, False
except CorrDiffError as err:
    error, refused = str(err), True
except BaseException as err:  # a crash is a failure, reported as such
    error, refused = f"{type(err).__name__}: {err}", False
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"refused": refused, "error": error[:300] if error else None,
                  "peak_mem_mb": round(peak / 1024, 1),
                  "extra_mem_mb": round((peak - base) / 1024, 1)}))
"""


def measure(kind: str, path: str | Path, *, timeout: float = 300) -> dict:
    """Load ``path`` in a fresh interpreter: {"refused", "error", "peak_mem_mb", "extra_mem_mb"}
    (the peak, and the peak above the imported libraries)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, kind, str(path), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = (proc.stderr or proc.stdout)[-300:]
        return {
            "refused": False,
            "error": f"exit {proc.returncode}: {tail}",
            "peak_mem_mb": None,
            "extra_mem_mb": None,
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(workdir: Path) -> dict:
    """Build every case in ``workdir``, load each in a subprocess, and summarise."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cases = []
    for case in CASES:
        path = case.build(
            workdir,
            workdir / f"{case.name}.{'safetensors' if case.kind == 'checkpoint' else 'mdlus'}",
        )
        file_mb = path.stat().st_size / 2**20
        result = measure(case.kind, path)
        cases.append({
            "name": case.name,
            "kind": case.kind,
            "refused": result["refused"],
            "peak_mem_mb": result["peak_mem_mb"],
            "extra_mem_mb": result["extra_mem_mb"],
            "file_mb": round(file_mb, 3),
            "within_budget": result["extra_mem_mb"] is not None
            and result["extra_mem_mb"] < 2 * file_mb + BUDGET_MB,
            # the temporary directory is this machine's: messages name files relative to it
            "error": result["error"] and result["error"].replace(f"{workdir}/", ""),
        })  # fmt: skip
        path.unlink()
    return summary(cases)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp))
    return finish(
        result,
        args.json,
        lambda c: f"{c['name']:32s} {c['file_mb']:8.3f} MB file  peak {c['peak_mem_mb']} MB",
    )


if __name__ == "__main__":
    sys.exit(main())
