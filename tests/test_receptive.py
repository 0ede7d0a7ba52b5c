"""Receptive fields: the analytic recursion, the gradient probe, and where an image is placed.

Known answers: the VGG receptive fields of method.md's table (the paper's network is VGG-19; VGG-16 shares
its first eight conv/pool layers), and closed forms ``r += (k - 1) d j``, ``j *= s``,
``start += ((k - 1) d / 2 - p) j`` for single strided and dilated convolutions.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diversevis import Network
from diversevis.core.errors import DiversevisError
from diversevis.core.receptive import (
    Placement,
    ReceptiveField,
    chain_receptive_fields,
    place_image,
    positions_inside,
    probe_receptive_field,
)
from diversevis.models.synthetic import cell_network
from diversevis.models.vgg16_onnx import build_vgg_features
from diversevis.models.zoo import VGGFeatures, vgg_aliases

VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M"]
VGG19_CFG += [512, 512, 512, 512, "M"]


def vgg19_valid(input_size: int) -> Network:
    torch.manual_seed(0)
    return Network(
        VGGFeatures(build_vgg_features(VGG19_CFG, padding=0)),
        aliases=vgg_aliases(VGG19_CFG),
        name="vgg19-valid",
        input_size=input_size,
    )


def layer_forward(net: Network, layer: str):
    return lambda z: net.activations(z, [layer], normalize=False)[layer]


# ------------------------------------------------------------------------ VGG tables
VGG16_RF = {  # alias: (size, stride)
    "conv1_1": (3, 1),
    "conv1_2": (5, 1),
    "pool1": (6, 2),
    "conv2_1": (10, 2),
    "conv2_2": (14, 2),
    "pool2": (16, 4),
    "conv3_1": (24, 4),
    "conv3_2": (32, 4),
    "conv3_3": (40, 4),
}


def test_vgg16_paper_analytic_receptive_fields(vgg16_paper):
    got = {a: vgg16_paper.receptive_field(a) for a in VGG16_RF}
    assert {a: (rf.size, rf.stride) for a, rf in got.items()} == VGG16_RF
    assert {rf.method for rf in got.values()} == {"analytic"}
    # VALID: unit 0 is centred on the centre of the first RF-sized window
    assert {a: rf.start for a, rf in got.items()} == {a: (s - 1) / 2 for a, (s, _) in VGG16_RF.items()}


def test_vgg16_padded_receptive_fields_have_the_same_size_but_shifted_centres(vgg16):
    conv3_1 = vgg16.receptive_field("conv3_1")
    assert (conv3_1.size, conv3_1.stride, conv3_1.start) == (24, 4, 1.5)
    assert vgg16.receptive_field("conv1_1").start == 0.0  # a 3x3 conv with padding 1 is centred at 0


def test_vgg19_receptive_fields_match_the_paper_table():
    net = vgg19_valid(input_size=268)  # pool5's RF: the smallest input the whole VALID network takes
    table = {"conv3_4": 48, "pool3": 52, "conv4_1": 68, "conv4_3": 100, "conv4_4": 116, "pool4": 124}
    table |= {"conv5_1": 156, "conv5_2": 188, "conv5_3": 220, "conv5_4": 252, "pool5": 268}
    assert {a: net.receptive_field(a).size for a in table} == table
    assert net.receptive_field("pool4").stride == 16
    assert net.receptive_field("pool5").stride == 32


def test_vgg19_valid_at_the_default_input_size_has_receptive_fields_for_early_layers():
    net = vgg19_valid(input_size=224)
    assert net.receptive_field("conv3_4").size == 48


@pytest.mark.parametrize("layer", ["conv2_2", "conv3_1"])
def test_gradient_probe_agrees_with_the_analytic_result_on_vgg16(vgg16_paper, layer):
    analytic = vgg16_paper.receptive_field(layer)
    probe = probe_receptive_field(layer_forward(vgg16_paper, layer), 3, size=64)
    assert probe.method == "probe"
    assert (probe.size, probe.stride, probe.start) == (analytic.size, analytic.stride, analytic.start)


def test_gradient_probe_finds_the_centre_of_a_padded_network(vgg16):
    probe = probe_receptive_field(layer_forward(vgg16, "conv3_1"), 3, size=64)
    assert (probe.size, probe.stride, probe.start) == (24, 4, 1.5)


# ------------------------------------------------------------------ non-chain graphs
class Residual(nn.Module):
    """``x + conv(relu(conv(x)))`` with two padded 3x3 convs: RF grows by 4, the skip adds nothing."""

    def __init__(self, c: int = 2):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.c2(self.relu(self.c1(x)))


def residual_net() -> Network:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), Residual(), nn.MaxPool2d(2))
    return Network(seq, in_channels=1, input_size=32)


def test_analytic_chain_breaks_at_a_residual_block():
    rows = {r.name: r for r in residual_net().list_layers()}
    assert (rows["0"].rf, rows["1.c2"].rf) == (3, 7)  # leaves inside the block are still on the chain
    assert rows["1"].rf is None and rows["2"].rf is None  # the sum is not


def test_probe_gives_the_receptive_field_of_a_residual_block():
    net = residual_net()
    block = net.receptive_field("1")
    assert (block.size, block.stride, block.start, block.method) == (7, 1, 1.0, "probe")
    pool = net.receptive_field("2")
    assert (pool.size, pool.stride, pool.start, pool.method) == (8, 2, 1.5, "probe")


def test_probe_rejects_outputs_without_a_spatial_map():
    with pytest.raises(DiversevisError, match=r"\(B, K, h, w\).*whole input"):
        probe_receptive_field(lambda z: z.flatten(1), 1, size=8)


def test_probe_measures_the_stride_of_a_layer_with_a_two_by_two_map():
    layer = nn.Sequential(nn.Conv2d(1, 1, 7), nn.AvgPool2d(10))  # 32 px -> 26 -> 2x2, RF 16, stride 10
    rf = probe_receptive_field(layer, 1, size=32)
    assert (rf.size, rf.stride, rf.start) == (16, 10, 7.5)


def test_texture_cell_image_is_exactly_its_unit_receptive_field():
    p = cell_network("texture").placement("response")
    assert (p.image_size, p.canvas_size, p.offset, p.unit_index) == (16, 16, 0, 0)


# ---------------------------------------------------------------------- closed forms
def test_strided_then_dilated_conv_closed_form():
    seq = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(1, 1, 3, dilation=2))
    rfs, shapes = chain_receptive_fields(seq, torch.zeros(1, 1, 32, 32))
    # strided: r = 1 + 2 = 3, j = 2, start = 0 + (1 - 1) * 1 = 0
    assert rfs["0"] == ReceptiveField(size=3, stride=2, start=0.0)
    assert rfs["1"] == rfs["0"]  # elementwise
    # dilated: r = 3 + (3 - 1) * 2 * 2 = 11, j = 2, start = 0 + ((3 - 1) * 2 / 2 - 0) * 2 = 4
    assert rfs["2"] == ReceptiveField(size=11, stride=2, start=4.0)
    assert shapes == {"0": (1, 16, 16), "1": (1, 16, 16), "2": (1, 12, 12)}
    probe = probe_receptive_field(seq, 1, size=32)
    assert (probe.size, probe.stride, probe.start) == (11, 2, 4.0)


def test_pooling_and_elementwise_layers_compose():
    seq = nn.Sequential(
        nn.Conv2d(1, 2, 5, padding=2),  # r 5, start 0
        nn.BatchNorm2d(2),
        nn.Dropout(0.1),
        nn.AvgPool2d(3, stride=3),  # r 5 + 2 = 7, j 3, start 0 + 1 = 1
        nn.MaxPool2d(2, padding=1),  # r 7 + 3 = 10, j 6, start 1 + (0.5 - 1) * 3 = -0.5
    ).eval()
    rfs, _ = chain_receptive_fields(seq, torch.zeros(1, 1, 30, 30))
    assert rfs["3"] == ReceptiveField(size=7, stride=3, start=1.0)
    assert rfs["4"] == ReceptiveField(size=10, stride=6, start=-0.5)


def test_unknown_geometry_breaks_the_chain():
    seq = nn.Sequential(
        nn.Conv2d(1, 1, 3, padding="same"),  # "same" padding: not analysed
        nn.Conv2d(1, 1, 3),
    )
    rfs, _ = chain_receptive_fields(seq, torch.zeros(1, 1, 16, 16))
    assert rfs == {"0": None, "1": None}
    rfs, _ = chain_receptive_fields(nn.Sequential(nn.Conv2d(1, 1, (3, 5))), torch.zeros(1, 1, 16, 16))
    assert rfs == {"0": None}  # non-square kernel


def test_unit_centres_step_by_the_stride():
    rf = ReceptiveField(size=24, stride=4, start=1.5)
    assert [rf.center(i) for i in range(4)] == [1.5, 5.5, 9.5, 13.5]


# -------------------------------------------------------------------------- placement
def test_place_image_on_a_valid_layer_uses_the_image_as_canvas():
    rf = ReceptiveField(size=5, stride=1, start=2.0)
    p = place_image(rf, lambda s: max(0, s - 4))
    assert p == Placement(image_size=5, canvas_size=5, offset=0, unit_index=0, misalignment=0.0)


def test_place_image_on_a_padded_layer_skips_units_whose_rf_starts_outside_the_canvas():
    # padded 3x3 conv, stride 2, then a padded 3x3 conv: r 3 + 4 = 7, j 2, start 0
    rf = ReceptiveField(size=7, stride=2, start=0.0)
    p = place_image(rf, lambda s: (s + 1) // 2)
    # unit 0 centre 0 and unit 1 centre 2 would need negative offsets; unit 2 (centre 4) starts at 1
    assert p == Placement(image_size=7, canvas_size=9, offset=1, unit_index=2, misalignment=0.0)
    assert rf.center(p.unit_index) == p.offset + (p.image_size - 1) / 2


def test_place_image_reports_half_pixel_misalignment():
    rf = ReceptiveField(size=4, stride=1, start=0.0)  # even RF centred on integer pixels
    p = place_image(rf, lambda s: s)
    assert p == Placement(image_size=4, canvas_size=4, offset=0, unit_index=2, misalignment=0.5)


def test_place_image_grows_the_canvas_until_the_unit_exists():
    rf = ReceptiveField(size=3, stride=1, start=1.0)
    p = place_image(rf, lambda s: 1 if s >= 6 else 0)
    assert (p.canvas_size, p.offset, p.unit_index) == (6, 0, 0)


def test_place_image_fails_when_no_unit_exists():
    with pytest.raises(DiversevisError, match="could not place.*input_size"):
        place_image(ReceptiveField(size=3, stride=1, start=1.0), lambda s: 0)


def test_positions_inside_selects_units_centred_in_the_image():
    rf = ReceptiveField(size=24, stride=4, start=1.5)  # centres 1.5, 5.5, ..., 25.5
    assert positions_inside(rf, 2, 26, 7) == slice(1, 7)
    assert positions_inside(rf, 0, 10, 7) == slice(0, 3)  # 1.5, 5.5, 9.5
    assert positions_inside(rf, 5.5, 9.5, 7) == slice(1, 2)  # half-open interval
