"""``Network``: any ``nn.Module`` plus its input normalisation, layer aliases and receptive fields.

Images live in *display space* (RGB in ``[0, 1]``, mean grey 0.5); :meth:`Network.normalize` maps them
to the model's input space with the network's own ``(x - mean) / std``.

The user's module is borrowed, never changed: every forward pass runs it in eval mode with frozen
weights and in-place activations switched off (:func:`evaluating`), and puts back the training flags,
``requires_grad`` and in-place flags it found, whatever the user did to the module since wrapping.

The truncated forward (:meth:`Network.activations`) registers hooks only on the requested layers and
stops the forward pass as soon as the last of them has produced its output, so visualising
``conv3_1`` never runs ``conv3_2``, let alone the classifier head. Hooks are always removed, also when
the forward pass raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from diversevis.core.errors import DiversevisError, EnvironmentProblem, LayerNotFoundError, did_you_mean
from diversevis.core.receptive import (
    Placement,
    ReceptiveField,
    chain_receptive_fields,
    place_image,
    probe_receptive_field,
)

__all__ = ["Network", "LayerInfo", "as_network", "evaluating"]


class _StopForward(Exception):
    """Raised inside a hook once every requested activation has been captured."""


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode, weights frozen, in-place activations off; restore it all on exit.

    Inside the block every submodule is in eval mode (BatchNorm uses and keeps its running statistics,
    Dropout is off), no parameter requires a gradient (gradients flow to the input only) and every
    ``inplace`` flag is ``False`` (a captured activation is never overwritten by a later in-place ReLU).
    On exit, also after an exception, each submodule's ``training`` and ``inplace`` flag and each
    parameter's ``requires_grad`` are what they were on entry. Autograd graphs built inside keep
    treating the weights as constants after the block, so a backward pass later is fine.
    """
    # Only what is not already in the wanted state is switched (and switched back): a frozen eval-mode
    # model costs one scan. ``training``/``inplace`` are plain attributes, set through ``__dict__`` to skip
    # ``nn.Module.__setattr__`` (this runs on every forward pass).
    modules = list(module.modules())
    training = [m for m in modules if m.training]
    inplace = [m for m in modules if getattr(m, "inplace", None) is True]
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        for m in training:
            m.__dict__["training"] = False
        for m in inplace:
            m.__dict__["inplace"] = False
        for p in params:
            p.requires_grad_(False)
        yield module
    finally:
        for m in training:
            m.__dict__["training"] = True
        for m in inplace:
            m.__dict__["inplace"] = True
        for p in params:
            p.requires_grad_(True)


@dataclass(frozen=True)
class LayerInfo:
    """One row of :meth:`Network.list_layers`.

    Attributes
    ----------
    name : str
        Dot path of the module (``features.10``).
    alias : str or None
        Human alias (``conv3_1``) if the network defines one.
    type : str
        Module class name.
    shape : tuple of int or None
        Output shape ``(C, H, W)`` for the probe input size.
    rf : int or None
        Receptive-field size in input pixels (``None`` if not computed).
    stride : int or None
        Receptive-field stride in input pixels.
    """

    name: str
    alias: str | None
    type: str
    shape: tuple[int, ...] | None
    rf: int | None
    stride: int | None


def _check_finite_weights(module: nn.Module) -> None:
    """Refuse a model with a NaN or infinite parameter or floating buffer (e.g. BatchNorm statistics).

    Raises
    ------
    DiversevisError
        Naming the first offending tensor.
    """
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in tensors:
        if t.is_floating_point() and not t.is_meta and t.numel() and not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "infinite"
            raise DiversevisError(
                f"the model's {name!r} holds {kind} values: check the checkpoint (a diverged training "
                "run or a corrupt file); no image can be optimised through non-finite weights"
            )


class Network(nn.Module):
    """A model wrapped for visualisation.

    Parameters
    ----------
    module : nn.Module
        Any PyTorch model taking ``(N, C, H, W)`` images. It is not changed: each forward pass runs it
        in eval mode with frozen weights and in-place activations off, and restores its flags after
        (:func:`evaluating`). Moving the network (``Network.to``, or ``device=`` of a method) moves the
        module's parameters and buffers, as ``nn.Module.to`` does.
    mean, std : sequence of float, optional
        Per-channel input normalisation in display units: the model sees ``(x - mean) / std`` for a
        display-space image ``x`` in ``[0, 1]``. Defaults: identity (mean 0, std 1).
    aliases : mapping, optional
        Alias -> dot path (``{"conv3_1": "features.10"}``).
    name : str, optional
        Model name recorded in run specs (e.g. ``"vgg16-paper"``).
    spec : str, optional
        The spec that loads this model with :func:`diversevis.load_model` (set by the zoo; ``None`` for
        models built in Python).
    in_channels : int
        Number of input channels (3 for RGB, 1 for grayscale).
    input_size : int or (int, int)
        The model's input size, a side or ``(height, width)`` (224 for ImageNet models; e.g.
        ``(36, 64)`` for a readout model with a fixed-size core). Layer tables use it, and a target whose
        output has no spatial dimensions (a readout or logit vector ``(B, N)``) is optimised on a whole
        input of this size.

    A ``torch.compile`` wrapper is unwrapped (its original module is hooked); a model whose parameters
    are float64, float16 or bfloat16 gets its inputs cast to that dtype and gives float32 activations.
    """

    def __init__(
        self,
        module: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        aliases: Mapping[str, str] | None = None,
        name: str | None = None,
        spec: str | None = None,
        in_channels: int = 3,
        input_size: int | tuple[int, int] = 224,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise DiversevisError(f"Network needs an nn.Module, got {type(module).__name__}")
        module = getattr(module, "_orig_mod", module)  # torch.compile's OptimizedModule
        if isinstance(module, torch.jit.ScriptModule):
            raise DiversevisError(
                "TorchScript modules cannot be hooked layer by layer; pass the original Python nn.Module"
            )
        _check_finite_weights(module)
        self.module = module
        self.channels_last = False
        mean = [0.0] * in_channels if mean is None else list(mean)
        std = [1.0] * in_channels if std is None else list(std)
        if len(mean) != in_channels or len(std) != in_channels:
            raise DiversevisError(
                f"mean and std need {in_channels} values (one per input channel), "
                f"got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise DiversevisError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.aliases: dict[str, str] = dict(aliases or {})
        self.name = name or type(module).__name__
        self.spec = spec
        self.in_channels = in_channels
        self.input_hw = _input_hw(input_size)
        self.input_size = self.input_hw[0] if self.input_hw[0] == self.input_hw[1] else self.input_hw
        self._modules_by_name: dict[str, nn.Module] = {n: m for n, m in module.named_modules() if n}
        for alias, target in self.aliases.items():
            if target not in self._modules_by_name:
                raise DiversevisError(
                    f"alias {alias!r} points at {target!r}, which is not a module of the model"
                )
        self._rf_cache: dict[str, ReceptiveField] = {}
        self._out_size_cache: dict[tuple[str, int], tuple[int, ...]] = {}
        self._out_size_errors: dict[tuple[str, tuple[int, int]], str] = {}

    # ------------------------------------------------------------------ names
    @cached_property
    def _alias_of(self) -> dict[str, str]:
        return {v: k for k, v in self.aliases.items()}

    def resolve(self, layer: str) -> str:
        """Return the dot path of ``layer`` (an alias or a dot path).

        Raises
        ------
        LayerNotFoundError
            With close matches among aliases and module names.
        """
        if not isinstance(layer, str):
            raise LayerNotFoundError(f"layer names are strings, got {type(layer).__name__}")
        if layer in self.aliases:
            return self.aliases[layer]
        if layer in self._modules_by_name:
            return layer
        choices = list(self.aliases) + list(self._modules_by_name)
        shown = ", ".join(list(self.aliases)[:12] or list(self._modules_by_name)[:12])
        listing = f"`diversevis layers --model {self.spec}`" if self.spec else "Network.list_layers()"
        raise LayerNotFoundError(
            f"unknown layer {layer!r} in {self.name}.{did_you_mean(layer, choices)} "
            f"Layers include: {shown} (see {listing})"
        )

    def display_name(self, layer: str) -> str:
        """Alias of a layer if it has one, else its dot path."""
        path = self.resolve(layer)
        return self._alias_of.get(path, path)

    def layer_module(self, layer: str) -> nn.Module:
        """The ``nn.Module`` of ``layer``."""
        return self._modules_by_name[self.resolve(layer)]

    # ---------------------------------------------------------------- forward
    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter or buffer."""
        for t in self.module.parameters():
            return t.device
        for t in self.module.buffers():
            return t.device
        return self.mean.device

    def use_channels_last(self, enabled: bool = True) -> Network:
        """Keep the weights, and feed the inputs, in ``channels_last`` (NHWC) memory format.

        On CPUs oneDNN's NHWC convolution kernels are markedly faster for the small, many-channel maps of
        truncated forwards (see ``benchmarks/bench_diverse.py``); results agree with the default format
        to float rounding. Returns ``self``.
        """
        self.module.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.channels_last = bool(enabled)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters (float32 when it has none)."""
        for t in self.module.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def _input(self, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        x = self.normalize(x) if normalize else x
        if x.dim() == 4 and x.shape[1] != self.in_channels:
            raise DiversevisError(
                f"{self.name} was wrapped for {self.in_channels}-channel inputs but got {x.shape[1]} channels"
            )
        if x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)  # a float64 / half model: its own dtype in, float32 out
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Display space ``[0, 1]`` -> model input space: ``(x - mean) / std``."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full forward pass of a display-space batch ``(N, C, H, W)`` (eval mode, frozen weights)."""
        with evaluating(self.module):
            return self.module(self._input(x, True))

    def activations(
        self, x: torch.Tensor, layers: Sequence[str], *, normalize: bool = True
    ) -> dict[str, torch.Tensor]:
        """Truncated forward: the outputs of ``layers`` for a batch, stopping after the deepest one.

        Parameters
        ----------
        x : torch.Tensor
            Images ``(N, C, H, W)``, display space if ``normalize`` else model space.
        layers : sequence of str
            Aliases or dot paths.

        Returns
        -------
        dict
            ``{layer: output}`` keyed by the names given; each output is the module's output (for a conv
            layer followed by a ReLU that is the pre-ReLU activation, as the paper uses for its target).
        """
        paths = [self.resolve(layer) for layer in layers]
        wanted = {p: self._modules_by_name[p] for p in dict.fromkeys(paths)}
        captured: dict[str, torch.Tensor] = {}

        def make_hook(path: str):
            def hook(mod, inputs, output):
                if path in captured:
                    return
                if not isinstance(output, torch.Tensor):
                    raise DiversevisError(
                        f"layer {path!r} returns {type(output).__name__}, not a tensor; "
                        "choose one of its submodules"
                    )
                captured[path] = output
                if len(captured) == len(wanted):
                    raise _StopForward

            return hook

        handles = [m.register_forward_hook(make_hook(p)) for p, m in wanted.items()]
        try:
            with evaluating(self.module):
                self.module(self._input(x, normalize))
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [p for p in wanted if p not in captured]
        if missing:
            raise DiversevisError(f"layers {missing} were not reached by the forward pass of {self.name}")
        cast = self.dtype != torch.float32  # a float64 / half / bf16 model gives float32 activations
        return {layer: captured[p].float() if cast else captured[p] for layer, p in zip(layers, paths)}

    @cached_property
    def _completion_order(self) -> dict[str, int]:
        """Module path -> when it finished in a forward pass (a container finishes after its children)."""
        order: dict[str, int] = {}

        def done(name: str):
            def hook(mod, inputs, output) -> None:  # returns None: the output is left alone
                order.setdefault(name, len(order))

            return hook

        hooks = [m.register_forward_hook(done(name)) for name, m in self._modules_by_name.items()]
        try:
            x = torch.full((1, self.in_channels, *self.input_hw), 0.5, device=self.device)
            with torch.no_grad():
                self(x)
        except (RuntimeError, DiversevisError):
            pass  # an input the model refuses: no order known
        finally:
            for h in hooks:
                h.remove()
        return order

    def runs_after(self, layer: str, other: str) -> bool:
        """Whether ``layer``'s output is computed after ``other``'s in a forward pass (``False`` if unknown)."""
        order = self._completion_order
        a, b = self.resolve(layer), self.resolve(other)
        return a in order and b in order and order[a] > order[b]

    def pre_activation(self, layer: str) -> str | None:
        """The layer just before the rectifier that produces ``layer``'s output, if it ends in one.

        Runs one forward pass on a grey input and records the leaf modules called inside ``layer``'s
        module (or ``layer`` itself when it is a leaf): if the last is a ReLU-like rectifier, the name
        of the last other leaf called before it (e.g. ``layer1.1.bn2`` for a ResNet block's output;
        the residual sum, if any, sits between the two).
        """
        path = self.resolve(layer)
        inside = {
            m: n for n, m in self.module.named_modules() if n and (n == path or n.startswith(path + "."))
        }
        order: list[str] = []
        hooks = [
            m.register_forward_hook(lambda mod, i, o, name=name: order.append(name))
            for m, name in inside.items()
            if next(m.children(), None) is None
        ]
        try:
            x = torch.full((1, self.in_channels, *self.input_hw), 0.5, device=self.device)
            with torch.no_grad():
                self.activations(x, [path])
        except (DiversevisError, RuntimeError):
            return None
        finally:
            for h in hooks:
                h.remove()
        rectifiers = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Softplus)
        if not order or not isinstance(self._modules_by_name[order[-1]], rectifiers):
            return None
        before = [n for n in order if not isinstance(self._modules_by_name[n], rectifiers)]
        if before:
            return self._alias_of.get(before[-1], before[-1])
        names = list(self._modules_by_name)  # a bare ReLU layer: the module registered before it
        i = names.index(path)
        return self._alias_of.get(names[i - 1], names[i - 1]) if i > 0 else None

    def output_shape(self, layer: str, size: int | tuple[int, int]) -> tuple[int, ...]:
        """Output shape ``(C, H, W)`` of ``layer`` for a square (or ``(H, W)``) input; ``()`` if too small."""
        hw = _input_hw(size)
        key = (self.resolve(layer), hw)
        if key not in self._out_size_cache:
            x = torch.full((1, self.in_channels, *hw), 0.5, device=self.device)
            try:
                with torch.no_grad():
                    out = self.activations(x, [layer])[layer]
                shape = tuple(out.shape[1:])
            except torch.OutOfMemoryError as exc:  # the machine, not the input size
                raise EnvironmentProblem(
                    f"out of memory running {self.name} on a {hw[0]}x{hw[1]}px input on {self.device}: "
                    "free memory or use a smaller --input-size / --device cpu"
                ) from exc
            except RuntimeError as exc:  # input too small for this layer, or the model refuses the input
                shape = ()  # the model's reason is kept and named when a caller needs the output
                self._out_size_errors[key] = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._out_size_cache[key] = shape
        return self._out_size_cache[key]

    def channels(self, layer: str) -> int:
        """Number of channels (units) of a layer: its output's first dimension after the batch.

        Raises
        ------
        DiversevisError
            When the model cannot run on a ``(1, in_channels, *input_size)`` input, naming the model's
            error and the fix (channels, input size).
        """
        shape = self.output_shape(layer, self.input_hw)
        if not shape:
            raise DiversevisError(self._no_output_message(layer))
        return int(shape[0])

    def _no_output_message(self, layer: str) -> str:
        """Why ``layer`` gave no output for the model's input size, and what to do about it."""
        err = self._out_size_errors.get((self.resolve(layer), self.input_hw), "")
        h, w = self.input_hw
        size = f"{h}px" if h == w else f"{h}x{w}px"
        found = _first_conv_channels(self.module)
        if found is not None and found != self.in_channels:
            return (
                f"{self.name} takes {found}-channel inputs (its first convolution) but was wrapped for "
                f"{self.in_channels}: pass in_channels={found} (CLI: --in-channels {found})"
            )
        hint = "; if the model needs another input size, pass input_size=(H, W) (CLI: --input-size H,W)"
        return (
            f"layer {layer!r} produces no output for a {self.in_channels}-channel {size} input"
            + (f" (the model raised: {err})" if err else "")
            + hint
        )

    # -------------------------------------------------------- receptive fields
    @cached_property
    def _chain(self) -> tuple[dict[str, ReceptiveField | None], dict[str, tuple[int, ...]]]:
        x = torch.zeros(1, self.in_channels, *self.input_hw, device=self.device, dtype=self.dtype)
        names = {m: n for n, m in self.module.named_modules() if n}
        with evaluating(self.module):
            return chain_receptive_fields(self.module, x, names)

    def receptive_field(self, layer: str) -> ReceptiveField:
        """Receptive field of ``layer``: analytic on conv/pool chains, gradient probe otherwise."""
        path = self.resolve(layer)
        if path not in self._rf_cache:
            rf = self._chain[0].get(path)
            if rf is None:
                rf = probe_receptive_field(
                    lambda z: self.activations(z, [path], normalize=False)[path],
                    self.in_channels,
                    size=max(32, min(*self.input_hw, 64)),
                    device=self.device,
                )
            self._rf_cache[path] = rf
        return self._rf_cache[path]

    def placement(self, layer: str) -> Placement:
        """Where an RF-sized image goes in the canvas, and which unit of ``layer`` reads it."""
        rf = self.receptive_field(layer)

        def out_size(s: int) -> int:
            shape = self.output_shape(layer, s)
            return int(min(shape[-2:])) if len(shape) == 3 else 0

        return place_image(rf, out_size)

    def list_layers(self, input_size: int | None = None) -> list[LayerInfo]:
        """Table of the network's layers in execution order.

        Parameters
        ----------
        input_size : int, optional
            Square input side used to report output shapes (default ``self.input_size``).

        Returns
        -------
        list of LayerInfo
            Receptive fields are analytic where the layer lies on a conv/pool chain, else ``None``
            (use :meth:`receptive_field` to probe one layer). Layers that the input is too small to reach
            are left out.
        """
        if input_size is None or _input_hw(input_size) == self.input_hw:
            rfs, shapes = self._chain
        else:
            x = torch.zeros(1, self.in_channels, *_input_hw(input_size), device=self.device, dtype=self.dtype)
            with evaluating(self.module):
                rfs, shapes = chain_receptive_fields(self.module, x)
        if not shapes:
            raise DiversevisError(
                f"a {input_size or self.input_size}px input is too small for every layer of {self.name}"
            )
        rows = []
        for name, shape in shapes.items():
            rf = rfs.get(name)
            rows.append(
                LayerInfo(
                    name=name,
                    alias=self._alias_of.get(name),
                    type=type(self._modules_by_name[name]).__name__,
                    shape=shape,
                    rf=rf.size if rf else None,
                    stride=rf.stride if rf else None,
                )
            )
        return rows

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_channels={self.in_channels}, aliases={len(self.aliases)}"


def _input_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from a side or a pair of positive ints."""
    hw = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(hw) != 2 or min(hw) < 1:
        raise DiversevisError(f"input_size must be a side or (height, width) of positive ints, got {size!r}")
    return hw


def _first_conv_channels(module: nn.Module) -> int | None:
    """Input channels of the model's first convolution (``None`` without one)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(m.in_channels)
    return None


#: Loader of model spec strings (``"vgg16-paper"``, ``"file:net.pt"``), registered by the model registry
#: (:mod:`diversevis.models.zoo`) when it is imported, so that the engine does not import the registry.
_spec_loader: Callable[..., Network] | None = None


def register_spec_loader(loader: Callable[..., Network]) -> None:
    """Set the function that :func:`as_network` calls for a spec string (the registry's ``load_model``)."""
    global _spec_loader
    _spec_loader = loader


def as_network(model: Network | nn.Module | str, **kwargs) -> Network:
    """Accept a :class:`Network`, a plain ``nn.Module`` (identity normalisation) or a zoo spec string."""
    if isinstance(model, Network):
        return model
    if isinstance(model, str):
        if _spec_loader is None:  # pragma: no cover - ``import diversevis`` imports the registry
            raise DiversevisError("no model registry loaded: import diversevis first")
        return _spec_loader(model, **kwargs)
    if isinstance(model, nn.Module):
        return Network(model)
    raise DiversevisError(f"expected a Network, an nn.Module or a model name, got {type(model).__name__}")
