"""Settings are declared once: one frozen dataclass per method holds the defaults and the validation,
the keyword API, the CLI and the sweep use it, and the run spec records it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

import diversevis as dv
from diversevis.cli import build_parser
from diversevis.cli.common import settings_from_args
from diversevis.core.errors import DiversevisError
from diversevis.core.objectives import DIVERSITIES
from diversevis.methods.dfv_units import diverse_units, mei_units
from diversevis.methods.settings import DiverseSettings, MEISettings, ShiftSettings
from diversevis.models.synthetic import cell_network
from diversevis.study.sweep import sweep
from diversevis.study.sweep_settings import SweepSettings

KEYWORD_APIS = [
    (dv.mei, MEISettings),
    (mei_units, MEISettings),
    (dv.diverse, DiverseSettings),
    (diverse_units, DiverseSettings),
    (dv.shift_test, ShiftSettings),
    (sweep, SweepSettings),
]


@pytest.mark.parametrize("func, cls", KEYWORD_APIS, ids=lambda x: getattr(x, "__name__", ""))
def test_keyword_defaults_are_the_settings_defaults(func, cls):
    params = inspect.signature(func).parameters
    shared = [n for n in cls.names() if n in params]
    assert len(shared) >= len(cls.names()) - 2  # the keyword API exposes (nearly) every setting
    defaults = cls()
    for name in shared:
        expected = getattr(defaults, name)
        got = params[name].default
        assert (tuple(got) if name == "tests" else got) == expected, name


@pytest.mark.parametrize("cls", [MEISettings, DiverseSettings, ShiftSettings, SweepSettings])
def test_settings_are_frozen_and_round_trip_through_a_dict(cls):
    s = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1
    assert cls.from_dict(s.as_dict()) == s
    assert s.replace(seed=3).seed == 3 and s.seed == 0


def test_unknown_setting_is_refused_with_close_matches():
    with pytest.raises(DiversevisError, match="unknown DiverseSettings setting 'diversty'.*diversity"):
        DiverseSettings.from_dict({"diversty": 1.0})


@given(
    n_images=st.integers(-3, 12),
    diversity=st.floats(-1e3, 1e3, allow_nan=False),
    distance=st.sampled_from([*DIVERSITIES, "max", ""]),
    prior_weight=st.floats(-1.0, 1.0, allow_nan=False),
)
def test_diverse_settings_accept_exactly_the_valid_values(n_images, diversity, distance, prior_weight):
    valid = n_images >= 2 and diversity >= 0 and distance in DIVERSITIES and prior_weight >= 0
    kw = dict(n_images=n_images, diversity=diversity, distance=distance, prior_weight=prior_weight)
    if valid:
        s = DiverseSettings(**kw)
        assert DiverseSettings.from_dict(s.as_dict()) == s
    else:
        with pytest.raises(DiversevisError):
            DiverseSettings(**kw)


@given(weight_min=st.floats(-2, 3, allow_nan=False), stride=st.integers(-2, 5) | st.floats(0.5, 3.5))
def test_shift_settings_accept_exactly_the_valid_values(weight_min, stride):
    valid = 0 <= weight_min <= 1 and isinstance(stride, int) and stride >= 1
    if valid:
        assert ShiftSettings(weight_min=weight_min, stride=stride).stride == stride
    else:
        with pytest.raises(DiversevisError):
            ShiftSettings(weight_min=weight_min, stride=stride)


def test_batched_units_refuse_what_one_unit_refuses():
    net = cell_network("complex", size=9)
    for bad in (dict(diversity=-1.0), dict(n_images=1), dict(distance="max")):
        with pytest.raises(DiversevisError) as one:
            dv.diverse(net, "response", 0, **bad)
        with pytest.raises(DiversevisError) as many:
            diverse_units(net, "response", [0], **bad)
        assert str(one.value) == str(many.value)


def test_run_spec_records_every_setting_of_the_set():
    net = cell_network("complex", size=9)
    res = dv.diverse(net, "response", 0, n_images=3, diversity=0.5, norm=1.0, max_iter=5, mei=False)
    s = DiverseSettings(n_images=3, diversity=0.5, norm=1.0, max_iter=5)
    for key, value in s.spec(mei_computed=False).items():
        if key not in ("contrast", "images"):
            assert res.spec[key] == value, key
    assert res.spec["contrast"] is None  # an absolute norm replaces the contrast
    assert res.spec["natural_images"] == "bundled" and res.spec["distance_layer"] is None


def test_sweep_stores_the_settings_stores_from_before_hold():
    """Lambda-mode stores written before floor mode keep resuming with floor=None (CLI: --floor none):
    their stored dict is unchanged; floor mode adds its floors."""
    assert SweepSettings().stored("m")["floor"] == 0.85 and SweepSettings().stored("m")["mean_floor"] is None
    assert SweepSettings(floor=None).stored("vgg16-paper") == {
        "model": "vgg16-paper",
        "n_images": 6,
        "diversity": 0.01,
        "distance_layer": "auto",
        "contrast": 0.5,
        "max_iter": 1000,
        "seed": 0,
        "mei_restarts": 4,
        "shift_stride": 1,
    }
    assert SweepSettings(precision="bf16").stored("m")["precision"] == "bf16"
    assert "display_range" not in SweepSettings().stored("m")  # absent when off: old stores resume
    assert SweepSettings(display_range=True).stored("m")["display_range"] is True


def test_sweep_settings_give_each_test_the_sweeps_contrast_and_seed():
    s = SweepSettings(contrast=0.3, seed=7, max_iter=50, mei_restarts=2, images="photos")
    assert s.mei_settings() == MEISettings(contrast=0.3, seed=7, max_iter=50, restarts=2, images="photos")
    d = s.diverse_settings("conv2_2")
    assert (d.distance_layer, d.contrast, d.seed, d.max_iter) == ("conv2_2", 0.3, 7, 50)
    assert s.shift_settings(3) == ShiftSettings(contrast=0.3, stride=3, seed=7, images="photos")


def test_cli_flags_map_onto_the_settings():
    args = build_parser().parse_args(
        ["diverse", "--model", "cell:complex", "--layer", "response", "--unit", "0", "--images", "3",
         "--naturals", "photos", "--no-precondition", "--diversity", "2", "--tau", "0.2"]
    )  # fmt: skip
    s = settings_from_args(DiverseSettings, args)
    assert (s.n_images, s.images, s.precondition, s.diversity, s.tau) == (3, "photos", False, 2.0, 0.2)
    assert s.ema == DiverseSettings.ema  # no flag: the default
    args = build_parser().parse_args(
        ["shift-test", "--model", "m", "--layer", "l", "--unit", "0", "--no-precondition"]
    )
    s = settings_from_args(ShiftSettings, args)
    assert (s.precondition_grad, s.lr, s.max_iter) == (False, ShiftSettings.lr, ShiftSettings.max_iter)
