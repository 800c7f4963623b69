"""Fault trials of training: killed and resumed runs, and runs spread over processes.

:func:`run` repeats two kinds of trial on a tiny regression run (the tests' tiny network,
:data:`corrdiff_xr.testing.TINY_NETWORK`, with dropout 0.2, so the random state matters)
over a real Zarr store *without* consolidated metadata, and compares every result bit for
bit with one uninterrupted run of the same config:

``sigkill``
    a ``corrdiff-xr train`` subprocess is sent SIGKILL at a random moment of its training
    phase (mid-step, mid-checkpoint, mid-rotation of old checkpoints), then the same command
    is run again until it completes;
``hash_seeds``
    the run is spread over five successive processes, each extending ``training.duration``
    and each with another ``PYTHONHASHSEED`` (which changes the order in which Zarr lists an
    unconsolidated store's variables); all checkpoints must share one codec order.

Every process runs on one thread, so float reductions run in the same order in all of them.
A few minutes on two shared cores. ``benchmarks/faults.py`` calls :func:`run`; standalone::

    python benchmarks/_faults_train.py --work WORKDIR --json faults_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

DURATION = 40  # samples of every run (10 steps of 4)
CHAIN = (8, 16, 24, 32, 40)  # the durations of the five processes of a hash-seed trial


def _store(path: Path) -> str:
    from corrdiff_xr.data import synthetic_dataset

    if not path.exists():
        synthetic_dataset(ny=16, nx=16, nt=8, factor=4, chunks={"time": 2}).to_zarr(
            path, consolidated=False
        )
    return str(path)


def _config(workdir: Path, source: str, out: Path, duration: int) -> Path:
    training = {
        "duration": duration,
        "total_batch_size": 4,
        "lr": 1e-3,
        "output_dir": str(out),
        "checkpoint_every": 4,
        "keep_checkpoints": 2,
        "log_every": 4,
        "validate_every": 1000,
        "progress": False,
        "deterministic": True,
    }
    from corrdiff_xr.testing import tiny_network_dict

    network = tiny_network_dict(dropout=0.2, embedding_type="zero")
    data = {
        "task": "regression",
        "data": {"source": source},
        "network": network,
        "training": training,
    }
    path = workdir / f"{out.name}-{duration}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(hash_seed: int) -> dict[str, str]:
    import corrdiff_xr

    root = str(Path(corrdiff_xr.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED=str(hash_seed),
        PYTHONPATH=path,
    )


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "corrdiff_xr.cli", "train", "--config", str(config)]


def _train(config: Path, hash_seed: int = 0) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        _command(config),
        env=_env(hash_seed),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({config}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def _weights(run: Path) -> dict[str, Any]:
    from corrdiff_xr.model import CorrDiff

    return CorrDiff.load(run / "model.safetensors").state_dict()


def _identical(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _latest(run: Path) -> int:
    from corrdiff_xr.training import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(run / "checkpoints")
    return 0 if latest is None else int(latest.name)


def _sigkill_trial(
    workdir: Path, source: str, name: str, delay: float, reference: dict
) -> dict[str, Any]:
    """Kill a run ``delay`` s after its first checkpoint (training under way), then resume it."""
    from corrdiff_xr.training import checkpoint as ckpt

    out = workdir / name
    config = _config(workdir, source, out, DURATION)
    proc = subprocess.Popen(
        _command(config), env=_env(0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and _latest(out) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = _latest(out)
    readable = True
    for path in ckpt.list_checkpoints(out / "checkpoints"):
        try:
            readable &= ckpt.load_trainer_state(path)["nimg"] == int(path.name)
            _weights(path)
        except Exception:  # noqa: BLE001 (a trial reports, it does not stop)
            readable = False
    _train(config)
    return {
        "kind": "sigkill",
        "kill_after_first_checkpoint_s": round(delay, 3),
        "finished_before_kill": finished,
        "resumed_from_samples": at_kill,
        "checkpoints_readable": readable,
        "identical": readable and _identical(reference, _weights(out)),
    }


def _hash_seed_trial(
    workdir: Path, source: str, name: str, first_seed: int, reference: dict
) -> dict[str, Any]:
    """Five processes, each extending the duration, each with another PYTHONHASHSEED."""
    from corrdiff_xr.model import CorrDiff
    from corrdiff_xr.training import checkpoint as ckpt

    out = workdir / name
    orders = set()
    seeds = list(range(first_seed, first_seed + len(CHAIN)))
    for seed, duration in zip(seeds, CHAIN):
        _train(_config(workdir, source, out, duration), hash_seed=seed)
        codec = CorrDiff.load(
            ckpt.latest_checkpoint(out / "checkpoints") / "model.safetensors"
        ).codec
        orders.add((codec.in_channels, codec.out_channels))
    return {
        "kind": "hash_seeds",
        "hash_seeds": seeds,
        "durations": list(CHAIN),
        "codec_orders": len(orders),
        "identical": len(orders) == 1 and _identical(reference, _weights(out)),
    }


def run(
    workdir: Path, *, kill_trials: int = 4, hash_seed_trials: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Run the trials under ``workdir``; ``{"train_resume_trials", "train_resume_identical", "details"}``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source = _store(workdir / "data.zarr")
    ref_dir = workdir / "reference"
    config = _config(workdir, source, ref_dir, DURATION)
    proc = subprocess.Popen(
        _command(config), env=_env(0), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seen: dict[
        int, float
    ] = {}  # when each checkpoint appeared: the kills fall between first and last
    while proc.poll() is None:
        seen.setdefault(_latest(ref_dir), time.monotonic())
        time.sleep(0.01)
    if proc.wait() != 0:
        raise RuntimeError(f"reference training failed:\n{proc.stderr.read().decode()[-3000:]}")
    seen.pop(0, None)
    training_span = max(max(seen.values(), default=0.0) - min(seen.values(), default=0.0), 0.1)
    reference = _weights(ref_dir)

    rng = random.Random(seed)
    details = [
        _sigkill_trial(workdir, source, f"killed{i}", rng.uniform(0.0, training_span), reference)
        for i in range(kill_trials)
    ]
    details += [
        _hash_seed_trial(workdir, source, f"chain{i}", 1 + i * len(CHAIN), reference)
        for i in range(hash_seed_trials)
    ]
    return {
        "train_resume_trials": len(details),
        "train_resume_identical": sum(bool(d["identical"]) for d in details),
        "details": details,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work", type=Path, default=None, help="work directory (default: a temporary one)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--kill-trials", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run(args.work or Path(tmp), kill_trials=args.kill_trials)
        result["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["train_resume_identical"] == result["train_resume_trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
