"""The one keyed-noise mechanism reproduces the three recipes it replaced, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from corrdiff_xr.noise import (
    INFERENCE,
    TRAIN_PATCH,
    VALIDATION,
    KeyLayout,
    keyed_generator,
    keyed_seed,
    patch_generator,
    patch_seed,
    time_key,
)

M64 = (1 << 64) - 1
TIMES = [
    np.datetime64("2021-06-01T12:00", "ns"),
    np.datetime64("1969-12-31T23:00", "ns"),
    np.datetime64("1970-01-01T00:00:02", "ns"),
    np.datetime64("2262-04-11", "ns"),
]


# -- the formulas as they were written before the three recipes became one -----------------------
def old_inference_seed(seed, time, member, origin):
    ns = int(np.asarray(time).astype("datetime64[ns]").astype(np.int64)) & M64
    row, col = (int(v) & M64 for v in origin)
    words = np.random.SeedSequence([int(seed), ns, int(member), row, col]).generate_state(
        2, dtype=np.uint32
    )
    return (int(words[0]) << 31 | int(words[1]) >> 1) & ((1 << 63) - 1)


def old_loader_generator(seed, epoch, time_index):
    seq = np.random.SeedSequence([seed, epoch, time_index, 0x9A7C4])
    return torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))


def old_validation_generator(seed, time_index, member, device):
    state = np.random.SeedSequence([seed, time_index, member, 0x7A11D]).generate_state(
        1, dtype=np.uint64
    )[0]
    return torch.Generator(device=device).manual_seed(int(state >> 1))


def same_state(a: torch.Generator, b: torch.Generator) -> bool:
    return a.initial_seed() == b.initial_seed() and torch.equal(a.get_state(), b.get_state())


INFERENCE_KEYS = [(0, t, 0, (0, 0)) for t in TIMES] + [
    (7, TIMES[0], 3, (-2, 40)),
    (1, TIMES[1], 12, (-6, -6)),
    (2**40, TIMES[0], 2**33, (96, 2**31)),
    (5, TIMES[3], 0, (0, 8)),
    (5, TIMES[3], 0, (8, 0)),
]
TRAINING_KEYS = [
    (0, 0, 0),
    (1, 0, 5),
    (1, 5, 0),
    (3, 17, 12345),
    (2**32 + 1, 2, 2**40),
    (99, 1, 8759),
]


@pytest.mark.parametrize("key", INFERENCE_KEYS)
def test_inference_patch_seeds_and_generators_are_the_old_ones(key):
    seed, time, member, origin = key
    old = old_inference_seed(*key)
    assert patch_seed(*key) == old
    assert keyed_seed(INFERENCE, seed, time_key(time), member, *origin) == old
    old_gen = torch.Generator().manual_seed(old)
    assert same_state(patch_generator(*key), old_gen)
    assert same_state(keyed_generator(INFERENCE, seed, time_key(time), member, *origin), old_gen)


@pytest.mark.parametrize("key", TRAINING_KEYS)
def test_training_patch_generators_are_the_old_loaders(key):
    from corrdiff_xr.training.loader import _patch_generator

    old = old_loader_generator(*key)
    assert same_state(keyed_generator(TRAIN_PATCH, *key), old)
    assert same_state(_patch_generator(*key), old)
    assert torch.equal(
        torch.randint(0, 1000, (8,), generator=_patch_generator(*key)),
        torch.randint(0, 1000, (8,), generator=old_loader_generator(*key)),
    )


@pytest.mark.parametrize("key", TRAINING_KEYS)
def test_validation_generators_are_the_old_ones(key):
    from corrdiff_xr.training.validation import _generator

    cpu = torch.device("cpu")
    old = old_validation_generator(*key, cpu)
    assert same_state(keyed_generator(VALIDATION, *key, device=cpu), old)
    assert same_state(_generator(*key, cpu), old)


def test_the_same_words_under_different_layouts_give_different_seeds():
    seeds = {keyed_seed(layout, 3, 4, 5) for layout in (TRAIN_PATCH, VALIDATION)}
    seeds.add(keyed_seed(INFERENCE, 3, 4, 5, 0, 0))
    assert len(seeds) == 3


def test_every_key_word_changes_the_seed():
    base = (7, time_key(TIMES[0]), 3, 8, 16)
    seeds = {keyed_seed(INFERENCE, *base)}
    for i in range(len(base)):
        seeds.add(keyed_seed(INFERENCE, *base[:i], base[i] + 1, *base[i + 1 :]))
    assert len(seeds) == len(base) + 1
    assert all(0 <= s < 2**63 for s in seeds)


def test_keyed_seeds_are_stable_across_processes():
    here = [
        keyed_seed(TRAIN_PATCH, 3, 1, 40),
        keyed_seed(VALIDATION, 3, 40, 2),
        keyed_seed(INFERENCE, 7, time_key(TIMES[1]), 3, -2, 40),
    ]
    code = (
        "import numpy as np; from corrdiff_xr.noise import *; "
        "print(keyed_seed(TRAIN_PATCH, 3, 1, 40), keyed_seed(VALIDATION, 3, 40, 2), "
        "keyed_seed(INFERENCE, 7, time_key(np.datetime64('1969-12-31T23:00', 'ns')), 3, -2, 40))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "321"},
    ).stdout.split()
    assert [int(v) for v in there] == here


@pytest.mark.parametrize(
    ("layout", "key", "error", "message"),
    [
        (
            TRAIN_PATCH,
            (1, 2),
            ValueError,
            r"training patch key has 3 words \(seed, epoch, time_index\), got 2",
        ),
        (
            TRAIN_PATCH,
            (1, -1, 2),
            ValueError,
            "training patch key word epoch must be non-negative, got -1",
        ),
        (
            VALIDATION,
            (1, 2, 0.5),
            TypeError,
            "validation member key word member must be an integer, got 0.5",
        ),
        (
            INFERENCE,
            (-1, 0, 0, 0, 0),
            ValueError,
            "inference patch key word seed must be non-negative, got -1",
        ),
        (INFERENCE, (1, 0, True, 0, 0), TypeError, "word member must be an integer, got True"),
    ],
)
def test_bad_keys_are_refused_naming_the_word_and_value(layout, key, error, message):
    with pytest.raises(error, match=message):
        keyed_seed(layout, *key)


def test_wrapped_words_take_negative_values_modulo_2_to_the_64():
    assert keyed_seed(INFERENCE, 1, -5, 0, -3, 0) == keyed_seed(
        INFERENCE, 1, M64 - 4, 0, M64 - 2, 0
    )
    layout = KeyLayout("test", ("a",), tag=1)
    with pytest.raises(ValueError, match="test key word a must be non-negative"):
        keyed_seed(layout, -1)


@pytest.mark.parametrize("calendar", ["noleap", "360_day", "all_leap", "julian"])
def test_a_cftime_time_is_keyed_by_its_nanoseconds_in_its_own_calendar(calendar):
    import cftime

    from corrdiff_xr.data.times import to_ns

    t = cftime.datetime(2001, 2, 28, 6, calendar=calendar)
    ns = int(to_ns(np.array([t]))[0])
    assert time_key(t) == ns == time_key(np.int64(ns)) == time_key(np.datetime64(ns, "ns"))
    assert patch_seed(4, t, 1, (0, 8)) == old_inference_seed(4, np.datetime64(ns, "ns"), 1, (0, 8))
    later = cftime.datetime(2001, 2, 28, 7, calendar=calendar)
    assert time_key(later) - time_key(t) == 3600 * 10**9


# -- the shared noise field of patched inference -------------------------------------------
def _field(origin, shape=(2, 20, 24), *, draws=1, member=0, time=7):
    from corrdiff_xr.noise import FieldNoise

    noise = FieldNoise(3, time, member, origin)
    return [noise.randn(shape, dtype=torch.float32) for _ in range(draws)]


def test_overlapping_patches_draw_the_same_field_where_they_overlap():
    # origins off the 16-pixel tile lattice, one before the domain's edge (negative)
    a = _field((-5, 7), draws=3)
    b = _field((3, 19), draws=3)
    for da, db in zip(a, b):  # every draw (latents, then each churn step) agrees
        torch.testing.assert_close(da[:, 8:, 12:], db[:, :12, :12], rtol=0, atol=0)
    assert not torch.equal(a[0], a[1])  # each draw is a fresh field


def test_the_field_is_standard_normal_and_differs_by_member_time_and_seed():
    from corrdiff_xr.noise import FieldNoise

    big = _field((0, 0), shape=(4, 96, 96))[0]
    assert abs(float(big.mean())) < 0.03 and abs(float(big.std()) - 1) < 0.03
    # neighbouring tiles are independent: no correlation across a tile edge
    left, right = big[:, :, 15].flatten(), big[:, :, 16].flatten()
    assert abs(float(torch.corrcoef(torch.stack([left, right]))[0, 1])) < 0.1
    others = [
        _field((0, 0), member=1)[0],
        _field((0, 0), time=8)[0],
        FieldNoise(4, 7, 0, (0, 0)).randn((2, 20, 24), dtype=torch.float32),
    ]
    base = _field((0, 0))[0]
    assert all(not torch.equal(base, o) for o in others)


def test_a_pointwise_denoiser_gives_patches_identical_to_the_whole_domain():
    """With shared noise, a patch's trajectory at a pixel is the whole domain's there, churn
    included: the seams of independent noise come from the noise, not from the sampler."""
    from corrdiff_xr.config import SamplerConfig
    from corrdiff_xr.noise import FieldNoise
    from corrdiff_xr.sampling import draw_latents, sample

    config = SamplerConfig(num_steps=4, S_churn=5.0, S_max=1e9)

    def denoise(x, sigma):  # no spatial context at all
        return x / (1 + sigma[:, None, None, None] ** 2)

    def run(origin, shape):
        gens = [FieldNoise(0, 11, 2, origin)]
        return sample(denoise, draw_latents(gens, shape), config=config, generators=gens)[0]

    whole = run((0, 0), (1, 32, 32))
    patch = run((8, 16), (1, 16, 16))
    torch.testing.assert_close(patch, whole[:, 8:24, 16:32], rtol=1e-6, atol=1e-5)
    independent = [torch.Generator().manual_seed(1)]
    other = sample(denoise, draw_latents(independent, (1, 16, 16)), config=config,
                   generators=independent)[0]  # fmt: skip
    assert not torch.allclose(other, whole[:, 8:24, 16:32])
