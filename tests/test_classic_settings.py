"""The classic methods' settings are declared once: ActmaxSettings, MultifacetedSettings and
InversionSettings hold the defaults and the validation of actmax, multifaceted and invert, and the
commands map their flags onto them."""

from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from diversevis.cli import build_parser
from diversevis.cli.common import settings_from_args
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.methods.classic import multifaceted_settings
from diversevis.methods.classic.actmax import ActmaxSettings, actmax
from diversevis.methods.classic.inversion import InversionSettings, invert
from diversevis.methods.classic.multifaceted import MultifacetedSettings, multifaceted

#: (keyword function, its settings class, a bad value, the message the function gives for it)
CASES = [
    (
        actmax,
        ActmaxSettings,
        {"scale": (1.2, 1.1)},
        "need 0 < scale[0] <= scale[1], got scale=(1.2, 1.1)",
    ),
    (
        multifaceted,
        MultifacetedSettings,
        {"k": 5, "top": 4},
        "k=5 exceeds the number of top patches (4); lower k or raise top",
    ),
    (invert, InversionSettings, {"lambda_tv": -1.0}, "lambda_tv must be a finite number >= 0, got -1.0"),
]
IDS = ["actmax", "multifaceted", "invert"]


def _net() -> Network:
    conv = nn.Conv2d(3, 2, 3)
    return Network(nn.Sequential(conv), mean=[0.5] * 3, std=[1.0] * 3, name="tiny", input_size=16)


@pytest.mark.parametrize("func, cls, bad, message", CASES, ids=IDS)
def test_settings_refuse_a_bad_value_with_the_functions_message(func, cls, bad, message):
    with pytest.raises(DiversevisError) as from_settings:
        cls(**bad)
    target = "astronaut" if func is invert else 0
    with pytest.raises(DiversevisError) as from_function:
        func(_net(), "0", target, **bad)
    assert str(from_settings.value) == str(from_function.value) == message


@pytest.mark.parametrize("cls", [ActmaxSettings, MultifacetedSettings, InversionSettings])
def test_settings_are_frozen_and_round_trip_through_a_dict(cls):
    s = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1
    assert cls.from_dict(s.as_dict()) == s
    changed = s.replace(seed=3, lr=0.5)
    assert (changed.seed, changed.lr, s.seed) == (3, 0.5, 0)
    assert cls.from_dict(changed.as_dict()) == changed
    hash(s)  # hashable: tuples, not lists, for sequence defaults


@pytest.mark.parametrize(
    "func, cls",
    [(actmax, ActmaxSettings), (multifaceted, MultifacetedSettings), (invert, InversionSettings)],
    ids=IDS,
)
def test_keyword_defaults_are_the_settings_defaults(func, cls):
    params = inspect.signature(func).parameters
    assert set(cls.names()) <= set(params)  # every setting is a keyword of the function
    defaults = cls()
    for name in cls.names():
        assert params[name].default == getattr(defaults, name), name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_multifaceted_settings_are_importable_from_the_method_module_and_store_plain_numbers():
    assert MultifacetedSettings is multifaceted_settings.MultifacetedSettings
    s = MultifacetedSettings(k=np.int64(2), tv=1, lr=1)
    assert (type(s.k), type(s.tv), type(s.lr)) == (int, float, float)
    with pytest.raises(DiversevisError, match="unknown pool 'median'; choose one of mean, max, flatten"):
        MultifacetedSettings(pool="median")


def test_commands_map_their_flags_onto_the_settings():
    parser = build_parser()
    base = ["-m", "cell:complex", "-l", "quadrature"]
    args = parser.parse_args(
        ["actmax", *base, "-n", "3", "--pixels", "--naturals", "photos", "--scale", "0.8,1.2"]
    )
    s = settings_from_args(ActmaxSettings, args, fft=not args.pixels)
    assert s == ActmaxSettings(n_images=3, fft=False, images="photos", scale=(0.8, 1.2))

    args = parser.parse_args(["multifaceted", *base, "-u", "0", "--k", "2", "--no-normalize"])
    s = settings_from_args(MultifacetedSettings, args, normalize=not args.no_normalize)
    assert s == MultifacetedSettings(k=2, normalize=False, max_iter=100)  # the command runs 100 iterations

    args = parser.parse_args(["invert", *base, "-i", "astronaut", "--no-precondition", "--lambda-tv", "0.01"])
    s = settings_from_args(InversionSettings, args, size=args.size or None)
    assert s == InversionSettings(size=128, precondition=False, lambda_tv=0.01)


@pytest.mark.parametrize("cls", [ActmaxSettings, MultifacetedSettings, InversionSettings])
def test_unknown_setting_names_the_close_match(cls):
    with pytest.raises(DiversevisError, match=f"unknown {cls.__name__} setting 'sed'.*seed"):
        cls.from_dict({"sed": 1})


def _number_fields(cls) -> list[tuple[type, str]]:
    return [
        (cls, f.name)
        for f in dataclasses.fields(cls)
        if isinstance(f.default, float) and not isinstance(f.default, bool)
    ]


NUMBER_FIELDS = [
    case for cls in (ActmaxSettings, MultifacetedSettings, InversionSettings) for case in _number_fields(cls)
]


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("cls, name", NUMBER_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in NUMBER_FIELDS])
def test_classic_settings_refuse_non_finite_numbers_naming_the_field(cls, name, bad):
    with pytest.raises(DiversevisError, match=rf"^{name} must be a finite number"):
        cls(**{name: bad})


@pytest.mark.parametrize("cls", [ActmaxSettings, MultifacetedSettings, InversionSettings])
def test_classic_settings_take_numpy_and_torch_integers_and_refuse_seeds_over_64_bits(cls):
    assert cls(seed=np.int64(3)).seed == 3 and type(cls(seed=torch.tensor(3)).seed) is int
    with pytest.raises(DiversevisError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\]"):
        cls(seed=2**70)
    with pytest.raises(DiversevisError, match=r"max_iter must be an integer in \[1, "):
        cls(max_iter=2.5)
