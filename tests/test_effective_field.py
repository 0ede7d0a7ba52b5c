"""Effective receptive fields: a unit that looks at 9 px of a 21 px nominal field.

Known answer: an energy-model complex cell (phase invariant, hence invariant to small shifts of a
grating) whose quadrature pair fills only the central 9x9 of 21x21 kernels. Its nominal receptive field
is 21 px; the gradient energy of its MEI lies in the central 9 px. Sized by the nominal field, the
shift test spreads the contrast over 21 px crops of which the cell sees 81/441, so the crops reach a
small fraction of the MEI; sized by the effective field, the cell's invariance shows.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import diversevis as dv
from diversevis.methods.problem import effective_box
from diversevis.models.synthetic import gabor

NOMINAL, EFFECTIVE = 21, 9


@pytest.fixture(scope="module")
def small_cell():
    g0 = gabor(EFFECTIVE, channels=3, wavelength=4.0, phase=0.0)
    g90 = gabor(EFFECTIVE, channels=3, wavelength=4.0, phase=math.pi / 2)
    g90 = g90 - (g90 * g0).sum() * g0
    conv = nn.Conv2d(3, 2, NOMINAL, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        a = (NOMINAL - EFFECTIVE) // 2
        conv.weight[0, :, a : a + EFFECTIVE, a : a + EFFECTIVE] = g0
        conv.weight[1, :, a : a + EFFECTIVE, a : a + EFFECTIVE] = g90 / g90.norm()

    class Energy(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = conv
            self.response = nn.Identity()

        def forward(self, x):
            return self.response((self.pair(x) ** 2).sum(1, keepdim=True))

    model = Energy().eval().requires_grad_(False)
    return dv.Network(model, mean=[0.5] * 3, std=[1.0] * 3, input_size=NOMINAL)


def test_effective_box_of_a_linear_filter_is_its_support():
    w = torch.zeros(1, 12, 20)
    w[0, 3:7, 10:15] = 1.0
    top, left, h, width = effective_box(lambda x: (x * w).flatten(1).sum(1), torch.zeros(1, 12, 20), 0.999)
    assert (top, left, h, width) == (3, 10, 4, 5)


def test_shift_test_with_the_effective_field_shows_the_cells_invariance(small_cell):
    kw = dict(norm=2.0, stride=2, max_iter=300, mei_restarts=2)
    nominal = dv.shift_test(small_cell, "response", 0, **kw)
    effective = dv.shift_test(small_cell, "response", 0, crop="effective", **kw)
    assert nominal.spec["image_size"] == NOMINAL
    assert effective.spec["image_size"] <= EFFECTIVE + 2 and effective.spec["window"] is not None
    assert nominal.min_ratio < 0.45 < 0.6 < effective.min_ratio


def test_diverse_images_on_the_effective_field_keep_the_activation(small_cell):
    res = dv.diverse(
        small_cell, "response", 0, n_images=3, diversity=1.0, norm=2.0, max_iter=300, crop="effective"
    )
    assert res.images.shape[-1] <= EFFECTIVE + 2 and float(res.ratios.min()) > 0.9
    assert res.spec["crop"] == "effective"


def test_effective_crop_needs_the_mei_image(small_cell):
    with pytest.raises(dv.DiversevisError, match="crop='effective'.*mei=True"):
        dv.diverse(small_cell, "response", 0, norm=2.0, mei=1.0, crop="effective", max_iter=5)
    with pytest.raises(dv.DiversevisError, match="unknown crop 'tight'"):
        dv.diverse(small_cell, "response", 0, norm=2.0, crop="tight")
