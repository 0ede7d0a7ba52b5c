"""One target, fixed: the geometry, contrast and read-out every DFV-family method shares.

:class:`Problem` validates a request (layer, unit or direction, metric, contrast, distance layer) and works
out where the receptive-field-sized image sits in the network's input; :meth:`Problem.evaluate` maps
images to target values and distance-space features. The result builders turn an optimisation into a
:class:`~diversevis.core.result.Result` the same way for the one-unit and the batched paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diversevis.core.checks import finite
from diversevis.core.devices import check_device
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network, as_network
from diversevis.core.objectives import Target, pairwise_rms_matrix, target_value
from diversevis.core.optimize import OptimizeResult
from diversevis.core.params import image_hw
from diversevis.core.receptive import Placement, positions_inside
from diversevis.core.result import Result
from diversevis.core.spec import common_spec

__all__ = ["Problem", "resolve_mei"]


@dataclass
class Problem:
    """Everything fixed for one target: geometry, contrast, the read-out and the distance space.

    Build it with :meth:`Problem.build`; :meth:`evaluate` maps images to target values and features.
    """

    net: Network
    target: Target
    direction: torch.Tensor
    placement: Placement
    norm: float
    distance_layer: str | None
    distance_slice: tuple[slice, slice] | None
    #: ``(top, left)`` of a sub-image inside a whole-input canvas (see :meth:`windowed`); else ``None``.
    window: tuple[int, int] | None = None

    @classmethod
    def build(
        cls,
        net: Network,
        layer: str,
        unit: int | None,
        direction: Sequence[float] | torch.Tensor | None,
        metric: str,
        *,
        contrast: float,
        norm: float | None,
        distance_layer: str | None,
        images_folder: str | Path | None,
    ) -> Problem:
        """Validate the request and work out the geometry (raises :class:`DiversevisError` on bad input)."""
        net.resolve(layer)
        if distance_layer in ("", "pixel", "pixels", "none"):
            distance_layer = None
        if distance_layer is not None:
            net.resolve(distance_layer)
            if net.runs_after(distance_layer, layer):
                raise DiversevisError(
                    f"distance layer {distance_layer!r} comes after the target layer {layer!r} in the forward "
                    "pass; diversity is measured in a lower layer (the paper: the previous block's last conv)"
                )
        channels = net.channels(layer)
        target = Target(layer, unit, direction, metric).check(channels)
        placement = target_placement(net, layer)
        norm = _image_norm(net, placement.image_size, contrast, norm, images_folder)
        dslice = _distance_slice(net, distance_layer, placement) if distance_layer is not None else None
        d = target.vector(channels, device=net.device)
        return cls(net, target, d, placement, float(norm), distance_layer, dslice)

    def check_distance(self, distance: str) -> None:
        """Gram diversity compares feature maps: it needs a distance layer, not pixel space."""
        if distance == "gram" and self.distance_layer is None:
            raise DiversevisError("gram diversity needs a distance_layer (a feature map), not pixel space")

    def canvas(self, images: torch.Tensor) -> torch.Tensor:
        """Place RF-sized images in a mean-grey canvas (identity for VALID networks)."""
        p = self.placement
        if self.window is not None:
            (H, W), (h, w), (top, left) = image_hw(p.canvas_size), images.shape[-2:], self.window
            return F.pad(images, (left, W - w - left, top, H - h - top), value=0.5)
        if p.canvas_size == p.image_size:
            return images
        a = p.offset
        b = p.canvas_size - p.image_size - a
        return F.pad(images, (a, b, a, b), value=0.5)

    def windowed(self, image: torch.Tensor, fraction: float = 0.95, *, square: bool = False) -> Problem:
        """This problem on the unit's *effective* receptive field around ``image`` (e.g. the MEI).

        The effective field is the bounding box of the fewest pixels that hold ``fraction`` of the
        gradient energy ``sum_c (d target / d x_c)^2`` at ``image`` (:func:`effective_box`); with
        ``square`` it is widened to a square about its centre. The new problem optimises or probes
        images of that box, placed where it lies in the canvas (grey elsewhere), read by the same unit,
        with the same L2 norm; distances are measured over the distance-layer positions inside the box.
        A problem already windowed is returned unchanged.
        """
        if self.window is not None:
            return self
        top, left, h, w = effective_box(lambda x: self.evaluate(x, need_features=False)[0], image, fraction)
        if square:
            top, left, h, w = _square_box(top, left, h, w, *image.shape[-2:])
        window = (self.placement.offset + top, self.placement.offset + left)
        place = dataclasses.replace(self.placement, image_size=h if h == w else (h, w))
        dslice = None
        if self.distance_layer is not None:
            dslice = _window_slice(self.net, self.distance_layer, place.canvas_size, window, (h, w))
        return dataclasses.replace(self, placement=place, window=window, distance_slice=dslice)

    def evaluate(
        self, images: torch.Tensor, need_features: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target values ``(N,)`` and distance-space features ``(N, K, h, w)`` (or ``None``)."""
        a, feats = self.read(images, need_features)
        if self.target.unit is not None and self.target.metric == "max":
            return a[:, self.target.unit], feats  # = a @ one-hot, but an inf in another channel stays there
        return target_value(a, self.direction, self.target.metric), feats

    def read(
        self, images: torch.Tensor, need_features: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All channels ``(N, K)`` of the read-out position, and the distance-space features (or ``None``)."""
        layers = [self.target.layer]
        if need_features and self.distance_layer is not None:
            layers.append(self.distance_layer)
        acts = self.net.activations(self.canvas(images), layers)
        i = self.placement.unit_index
        a = acts[self.target.layer]
        a = a if i is None else a[:, :, i, i]
        feats = None
        if need_features:
            feats = (
                images - 0.5
                if self.distance_layer is None
                else self._crop_features(acts[self.distance_layer])
            )
        return a, feats

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Distance-space features of ``images`` alone (the forward pass stops at the distance layer).

        ``images - 0.5`` in pixel space; else the rectified distance-layer map over the image.
        """
        if self.distance_layer is None:
            return images - 0.5
        acts = self.net.activations(self.canvas(images), [self.distance_layer])
        return self._crop_features(acts[self.distance_layer])

    def _crop_features(self, fmap: torch.Tensor) -> torch.Tensor:
        rs, cs = self.distance_slice
        return torch.relu(fmap[:, :, rs, cs])

    def spec(self) -> dict[str, Any]:
        """The geometry and target part of a run spec."""
        p = self.placement
        t = self.target
        return {
            "model": self.net.name,
            "model_spec": self.net.spec,
            "model_load_args": getattr(self.net, "load_args", None) or None,
            "layer": self.net.display_name(t.layer),
            "layer_path": self.net.resolve(t.layer),
            "unit": t.unit,
            "direction": None if t.direction is None else [float(v) for v in torch.as_tensor(t.direction)],
            "metric": t.metric,
            "norm": self.norm,
            "image_size": p.image_size,
            "canvas_size": p.canvas_size,
            "offset": p.offset,
            "unit_index": p.unit_index,
            "window": None if self.window is None else list(self.window),
            "rf_misalignment": p.misalignment,
            "distance_layer": None
            if self.distance_layer is None
            else self.net.display_name(self.distance_layer),
        }

    def run_spec(
        self,
        method: str,
        *,
        contrast: float,
        norm: float | None,
        images: str | Path | None,
        seed: int,
        opt: OptimizeResult | None = None,
        **settings: Any,
    ) -> dict[str, Any]:
        """The full run spec: method, target and geometry, ``settings``, seed, device, counts, versions."""
        return common_spec(
            method=method,
            **self.spec(),
            **settings,
            contrast=contrast if norm is None else None,
            seed=seed,
            device=str(self.net.device),
            dtype="float32",
            natural_images=str(images) if images else "bundled",
            **({} if opt is None else opt.summary()),
        )


def effective_problem(prob: Problem, mei: Result | None, *, square: bool = False) -> Problem:
    """``prob`` on the effective receptive field of its MEI (``crop="effective"``)."""
    if mei is None or mei.mei_image is None:
        raise DiversevisError(
            "crop='effective' sizes the images by the MEI's gradient energy: give mei=True or an MEI Result"
        )
    return prob.windowed(mei.mei_image.to(prob.net.device), square=square)


def effective_box(
    values: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, fraction: float = 0.95
) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the box holding ``fraction`` of the gradient energy at ``image``.

    Parameters
    ----------
    values : callable
        ``(1, C, H, W)`` images -> ``(1,)`` target value.
    image : torch.Tensor
        ``(C, H, W)`` display-space image (e.g. the MEI).
    fraction : float
        Share of the energy ``sum_c g_c^2`` the box must hold: the bounding box of the fewest pixels
        whose energy adds up to it (at least 3 x 3 px, inside the image).
    """
    x = image.detach()[None].clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(values(x).sum(), x)
    energy = (g[0].double() ** 2).sum(0)
    H, W = energy.shape
    total = float(energy.sum())
    if not total > 0:
        return 0, 0, H, W  # no gradient: the whole input
    order = torch.argsort(energy.flatten(), descending=True)
    keep = int(torch.searchsorted(torch.cumsum(energy.flatten()[order], 0) / total, fraction)) + 1
    rows, cols = order[:keep] // W, order[:keep] % W
    top, bottom = int(rows.min()), int(rows.max()) + 1
    left, right = int(cols.min()), int(cols.max()) + 1
    top, bottom = _at_least(top, bottom, 3, H)
    left, right = _at_least(left, right, 3, W)
    return top, left, bottom - top, right - left


def _square_box(top: int, left: int, h: int, w: int, H: int, W: int) -> tuple[int, int, int, int]:
    """The square of side ``max(h, w)`` (at most ``min(H, W)``) about the box's centre, inside the image."""
    side = min(max(h, w), H, W)
    top = min(max(0, top + (h - side) // 2), H - side)
    left = min(max(0, left + (w - side) // 2), W - side)
    return top, left, side, side


def _window_slice(
    net: Network, layer: str, canvas: int | tuple[int, int], window: tuple[int, int], hw: tuple[int, int]
) -> tuple[slice, slice]:
    """Positions of ``layer`` (in a ``canvas`` input) whose receptive fields lie over the window."""
    shape = net.output_shape(layer, canvas)
    rf = net.receptive_field(layer)
    try:
        return tuple(  # type: ignore[return-value]
            positions_inside(rf, lo, lo + n, size) for lo, n, size in zip(window, hw, shape[1:])
        )
    except ValueError:
        return slice(None), slice(None)  # no position wholly inside: every position


def _at_least(lo: int, hi: int, n: int, size: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` symmetrically to at least ``n`` (clipped to ``[0, size)``)."""
    while hi - lo < min(n, size):
        lo, hi = max(0, lo - 1), min(size, hi + 1)
    return lo, hi


#: Largest image side (px) a target may ask for; beyond it the layer's receptive field is refused.
MAX_IMAGE_SIDE = 512


def target_placement(net: Network, layer: str) -> Placement:
    """Where the optimised image goes for ``layer``: an RF-sized patch, or the model's whole input.

    A layer whose output has no spatial dimensions (``(B, N)``: readout neurons, logits) or is 1x1 at
    the model's input size (after global pooling) is read on a whole input of ``net.input_size``; any
    other layer on an image of its receptive field, placed so that one unit sees exactly that image.
    """
    shape = net.output_shape(layer, net.input_hw)
    h, w = net.input_hw
    if len(shape) == 1 or (len(shape) == 3 and shape[1:] == (1, 1)):
        size = h if h == w else (h, w)
        return Placement(size, size, 0, None if len(shape) == 1 else 0, whole_input=True)
    if len(shape) != 3:
        raise DiversevisError(
            f"layer {layer!r} gives a {len(shape) + 1}-d output {tuple(shape)} per image; a target needs a "
            "(B, C, H, W) map or a (B, N) vector"
        )
    rf = net.receptive_field(layer)
    if rf.size > MAX_IMAGE_SIDE:
        raise DiversevisError(
            f"layer {layer!r} has a {rf.size}px receptive field (more than {MAX_IMAGE_SIDE}px): "
            "visualising one of its units means optimising a huge image. Choose an earlier layer, or a "
            "layer after global pooling / the readout, which is optimised on the model's input size"
        )
    return net.placement(layer)


def _image_norm(
    net: Network, size: int | tuple[int, int], contrast: float, norm: float | None, folder
) -> float:
    """The images' L2 norm: ``norm``, or ``contrast`` x the mean norm of natural patches of their shape."""
    if norm is not None:
        if not norm > 0:
            raise DiversevisError(f"norm must be > 0, got {norm}")
        return float(norm)
    if not contrast > 0:
        raise DiversevisError(f"contrast must be > 0 (a fraction of the natural-patch norm), got {contrast}")
    if net.in_channels not in (1, 3):
        raise DiversevisError(
            "natural-image contrast is defined for RGB (3) and grayscale (1) inputs; give an absolute "
            f"norm= (CLI --norm) for {net.in_channels}-channel inputs"
        )
    from diversevis.images.naturals import natural_patch_norm

    return contrast * natural_patch_norm(size, channels=net.in_channels, folder=folder)


def _distance_slice(net: Network, distance_layer: str, placement: Placement) -> tuple[slice, slice]:
    """The positions of ``distance_layer`` whose receptive fields lie over the image."""
    canvas = placement.canvas_size
    shape = net.output_shape(distance_layer, canvas)
    if len(shape) != 3:
        raise DiversevisError(
            f"distance layer {distance_layer!r} has no spatial output for a "
            f"{canvas}px input; choose a lower layer"
        )
    if placement.whole_input:
        return slice(None), slice(None)
    rf_d = net.receptive_field(distance_layer)
    size = placement.image_size
    lo, hi = placement.offset, placement.offset + size
    try:
        return positions_inside(rf_d, lo, hi, shape[1]), positions_inside(rf_d, lo, hi, shape[2])
    except ValueError:
        raise DiversevisError(
            f"no unit of distance layer {distance_layer!r} lies over the {size}px image; choose a lower layer"
        ) from None


def resolve_mei(
    mei: bool | float | Result | None, compute: Callable[[], Result]
) -> tuple[Result | None, float | None]:
    """Interpret a ``mei=`` argument: ``True`` computes it, a :class:`Result` or a number supplies it.

    Returns
    -------
    (Result or None, float or None)
        The MEI result (if there is one) and its activation (``None`` for ``False``/``None``).
    """
    if isinstance(mei, Result):
        return mei, mei.mei_activation
    if mei is True:
        res = compute()
        return res, res.mei_activation
    if mei is False or mei is None:
        return None, None
    return None, mei_value(mei)


def mei_value(mei: Any) -> float:
    """A given MEI activation: a finite number > 0 (the ratios to it are meaningless otherwise)."""
    return finite("mei (the MEI's activation)", mei, 0.0, open_lo=True)


def _prepare(model, device) -> Network:
    """The model as a :class:`Network`, moved to ``device`` (checked first) when one is given."""
    device = check_device(device)
    net = as_network(model)
    if device is not None:
        net.to(device)
    return net


_common_spec = common_spec  # the name the methods import


def _mei_result(
    prob: Problem, opt: OptimizeResult, acts: torch.Tensor, settings: dict[str, Any], **extra
) -> Result:
    """The best restart of an MEI run as a :class:`Result` (shared by :func:`mei` and :func:`mei_units`)."""
    best = int(acts.argmax())
    spec = prob.run_spec("mei", opt=opt, **settings)
    spec.update(extra)
    img = opt.images[best : best + 1].detach().cpu()
    return Result(
        images=img,
        activations=acts[best : best + 1].detach().cpu(),
        distances=torch.zeros(1, 1),
        loss_history=opt.history,
        spec=spec,
        mei_activation=float(acts[best]),
        mei_image=img[0],
        extra={"restart_activations": [float(a) for a in acts]},
    ).measure_shown(_target_of(prob, extra.get("unit")), device=prob.net.device)


def _target_of(prob: Problem, unit: int | None):
    """Images -> target values: the problem's own target, or channel ``unit`` (a batched result)."""
    if unit is None:
        return lambda x: prob.evaluate(x, need_features=False)[0]
    return lambda x: prob.read(x, need_features=False)[0][:, unit]


def _resolve_prior(prior: Any, device: torch.device):
    """A :class:`~diversevis.prior.PixelCNNPrior` on ``device`` from a model, preset name or path."""
    from diversevis.images.prior import PixelCNNPrior, load_prior

    if isinstance(prior, PixelCNNPrior):
        return prior.to(device)
    return load_prior(prior or "default", device=device)


def _diverse_result(
    prob: Problem,
    opt: OptimizeResult,
    acts: torch.Tensor,
    feats: torch.Tensor,
    mei_res: Result | None,
    mei_act: float | None,
    settings: dict[str, Any],
    **extra,
) -> Result:
    """A diverse set as a :class:`Result` (shared by :func:`diverse` and :func:`diverse_units`)."""
    dist = pairwise_rms_matrix(feats.flatten(1))
    spec = prob.run_spec(
        "diverse",
        opt=opt,
        **settings,
        mei_seconds=None if mei_res is None else mei_res.spec.get("seconds"),
        mei_n_iter=None if mei_res is None else mei_res.spec.get("n_iter"),
    )
    spec.update(extra)
    return Result(
        images=opt.images.detach().cpu(),
        activations=acts.detach().cpu(),
        distances=dist.cpu(),
        loss_history=opt.history,
        spec=spec,
        mei_activation=mei_act,
        mei_image=None if mei_res is None else mei_res.mei_image,
    ).measure_shown(_target_of(prob, extra.get("unit")), device=prob.net.device)


def _check_units(net: Network, layer: str, units: Sequence[int]) -> list[int]:
    """Distinct valid channel indices of ``layer`` (raises :class:`DiversevisError` otherwise)."""
    units = [int(u) for u in units]
    if not units:
        raise DiversevisError("give at least one unit")
    if len(set(units)) != len(units):
        raise DiversevisError("units must be distinct")
    channels = net.channels(layer)
    for u in units:
        Target(layer, u).check(channels)
    return units


def _seeded_images(
    groups: int, n: int, channels: int, size: int | tuple[int, int], seed: int
) -> torch.Tensor:
    """The initial raw images of ``groups`` runs that each start like a single run with ``seed``."""
    one = torch.randn(n, channels, *image_hw(size), generator=torch.Generator().manual_seed(seed))
    return one.repeat(groups, 1, 1, 1)
