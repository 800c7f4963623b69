"""The per-process model cache behind downscale's tasks."""

from __future__ import annotations

import os

import pytest
import torch

from corrdiff_xr.codec import Codec
from corrdiff_xr.inference import cache
from corrdiff_xr.testing import tiny_corrdiff


@pytest.fixture(scope="module")
def model():
    codec = Codec(("a",), ("b",), ("s",), {"a": (0.0, 1.0), "b": (1.0, 2.0), "s": (0.0, 3.0)})
    return tiny_corrdiff(codec, (8, 8), channels=4)


def test_an_in_memory_model_is_saved_once_until_its_weights_change(model):
    first = cache.token_for(model)
    assert cache.token_for(model) == first
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # bumps the tensor's version counter
    changed = cache.token_for(model)
    assert changed.path != first.path
    loaded = cache.load_model(changed)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_checkpoint_is_loaded_once_per_process_and_few_models_are_kept(model, tmp_path):
    tokens = []
    for i in range(3):
        path = model.save(tmp_path / f"m{i}.safetensors")
        tokens.append(cache.checkpoint_token(path, device="cpu"))
    a = cache.load_model(tokens[0])
    assert cache.load_model(tokens[0]) is a
    assert cache.LOADS[(tokens[0].path, tokens[0].stamp)] == 1
    for token in tokens[1:]:
        cache.load_model(token)
    assert len(cache._MODELS) <= cache.MAX_MODELS
    assert not a.training  # loaded for evaluation (no dropout)


def test_a_checkpoint_changed_after_the_graph_was_built_is_refused(model, tmp_path):
    path = model.save(tmp_path / "m.safetensors")
    token = cache.checkpoint_token(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(RuntimeError, match="changed after"):
        cache.load_model(token)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cache.checkpoint_token(tmp_path / "missing.safetensors")
