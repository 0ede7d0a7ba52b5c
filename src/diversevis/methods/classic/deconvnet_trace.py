"""DeconvNet, going up: the forward pass up to the target layer, recorded as a chain of leaf modules.

:func:`trace_chain` runs the network with hooks on every leaf module and checks that the pass is a
*chain* of the leaves the DeconvNet can walk back through (:data:`SUPPORTED_MODULES`; a leaf that
returns its input unchanged counts as an identity). Everything else -- residual or branching blocks,
functional operations between modules, other layer types, BatchNorm2d without running statistics --
is refused with the type and path of every offending module. See
:mod:`diversevis.methods.classic.deconvnet` for the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network, evaluating

__all__ = ["SUPPORTED_MODULES", "DeconvStep", "trace_chain"]

#: Leaf module types the DeconvNet walks through (BatchNorm2d only with running statistics).
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.BatchNorm2d,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class DeconvStep:
    """One leaf module call of the forward pass, as the DeconvNet needs it to go back down.

    Attributes
    ----------
    path : str
        Dot path of the module in the network (``features.4``).
    module : nn.Module
        The leaf module.
    input : torch.Tensor
        Its input ``(N, C, H, W)`` in model space (kept for the max-pooling switches and shapes).
    output : torch.Tensor or None
        Its output.
    passthrough : bool
        The module returned its input unchanged (any identity-like module): nothing to undo.
    """

    path: str
    module: nn.Module
    input: torch.Tensor | None
    input_version: int = -1
    output: Any = None
    output_version: int = -1
    passthrough: bool = False


class _Stop(Exception):
    """Raised by the target layer's hook: the forward pass need not go further."""


def _unsupported_reason(m: nn.Module) -> str | None:
    """Why the DeconvNet cannot walk back through leaf ``m`` (``None`` if it can)."""
    if not isinstance(m, SUPPORTED_MODULES):
        return type(m).__name__
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            return f"Conv2d with padding_mode={m.padding_mode!r}"
        if _conv_padding(m) is None:
            return "Conv2d with asymmetric 'same' padding"
    if isinstance(m, nn.BatchNorm2d) and m.running_var is None:  # the network always runs in eval mode
        return "BatchNorm2d without running statistics"
    return None


def _conv_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    """Symmetric ``(pad_h, pad_w)`` of a convolution, or ``None`` when ``'same'`` pads asymmetrically."""
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        if any(t % 2 for t in totals):
            return None
        return (totals[0] // 2, totals[1] // 2)
    return (int(m.padding[0]), int(m.padding[1]))


def _parents(path: str) -> list[str]:
    """Dot paths of the containers above ``path``, outermost first (``""`` is the root)."""
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(len(parts))]


def _contains(parent: str, path: str) -> bool:
    return parent == "" or path == parent or path.startswith(parent + ".")


def _culprit(modules: dict[str, nn.Module], before: str | None, after: str) -> str:
    """The container whose forward changed the tensor between leaf ``before`` and leaf ``after``.

    The innermost block that ``before`` ends (e.g. a residual block returning ``x + f(x)``), else the
    innermost block holding both (e.g. a skip inside it), else the root. Plain ``nn.Sequential`` /
    ``ModuleList`` containers only call their children, so they are never blamed.
    """

    def active(p: str) -> bool:
        return not isinstance(modules[p], _CONTAINERS)

    if before is not None:
        ended = [p for p in _parents(before) if not _contains(p, after) and active(p)]
        if ended:
            return ended[-1]
        shared = [p for p in _parents(after) if _contains(p, before) and active(p)]
        if shared:
            return shared[-1]
    else:
        above = [p for p in _parents(after) if active(p)]
        if above:
            return above[-1]
    return ""


def trace_chain(net: Network, layer: str, x: torch.Tensor) -> tuple[list[DeconvStep], torch.Tensor]:
    """Run a model-space batch up to ``layer`` and record the chain of leaf modules it went through.

    Parameters
    ----------
    net : Network
        The network.
    layer : str
        Target layer (alias or dot path); it must produce a ``(N, C, h, w)`` map.
    x : torch.Tensor
        ``(N, C, H, W)`` batch in *model* space (already normalised).

    Returns
    -------
    steps : list of DeconvStep
        The leaf calls from the input to the target, in forward order (the target included when it is a
        leaf).
    output : torch.Tensor
        ``(N, K, h, w)`` output of ``layer``.

    Raises
    ------
    DiversevisError
        If a module up to ``layer`` is not supported or the forward pass is not a chain of leaf modules;
        the message names every offending module's type and path.
    """
    path = net.resolve(layer)
    target = net.layer_module(layer)
    modules = dict(net.module.named_modules())
    steps, out, out_version = _record_leaf_calls(net, layer, target, modules, x)
    problems = _chain_problems(modules, steps, x, path, target, out, out_version)
    if problems:
        listed = _group_problems(problems)
        raise DiversevisError(
            f"DeconvNet cannot project {net.display_name(layer)!r} of {net.name} back to pixels: unsupported "
            f"modules up to it: {listed}. Supported: a chain of Conv2d, ReLU, MaxPool2d, BatchNorm2d (with running statistics), "
            "Identity and Dropout modules (VGG-style nn.Sequential stacks)"
        )
    return steps, out


def _record_leaf_calls(
    net: Network, layer: str, target: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor
) -> tuple[list[DeconvStep], torch.Tensor, int]:
    """Run ``x`` until ``target`` returns, recording every leaf call.

    Returns the leaf calls, ``layer``'s ``(N, K, h, w)`` output and the output's version counter.
    """
    steps: list[DeconvStep] = []
    result: dict[str, Any] = {}

    def pre_hook(name: str):
        def hook(mod, inputs):
            inp = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor) else None
            steps.append(DeconvStep(name, mod, inp, -1 if inp is None else inp._version))

        return hook

    def post_hook(mod, inputs, output):
        if steps and steps[-1].module is mod and steps[-1].output is None:
            steps[-1].output = output
            if isinstance(output, torch.Tensor):
                steps[-1].output_version = output._version

    def target_hook(mod, inputs, output):
        result["output"] = output
        result["version"] = output._version if isinstance(output, torch.Tensor) else -1
        raise _Stop

    handles = []
    try:
        for name, m in modules.items():
            if next(m.children(), None) is None:
                handles.append(m.register_forward_pre_hook(pre_hook(name)))
                handles.append(m.register_forward_hook(post_hook))
        handles.append(target.register_forward_hook(target_hook))
        with torch.no_grad(), evaluating(net.module):
            net.module(x)
    except _Stop:
        pass
    except RuntimeError as e:
        raise DiversevisError(
            f"the forward pass of {net.name} failed on a {tuple(x.shape)} input before {layer!r}: {e}"
        ) from None
    finally:
        for h in handles:
            h.remove()
    if "output" not in result:
        raise DiversevisError(f"layer {layer!r} was not reached by the forward pass of {net.name}")
    out = result["output"]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DiversevisError(
            f"DeconvNet needs a layer with (N, C, h, w) feature maps; {layer!r} of {net.name} gives {shape}"
        )
    return steps, out, result["version"]


def _chain_problems(
    modules: dict[str, nn.Module],
    steps: list[DeconvStep],
    x: torch.Tensor,
    path: str,
    target: nn.Module,
    out: torch.Tensor,
    out_version: int,
) -> dict[str, str]:
    """Why the recorded calls are not a chain of supported leaves from ``x`` to ``out`` (path -> reason).

    Marks the steps whose module returned its input unchanged as :attr:`DeconvStep.passthrough`.
    """
    problems: dict[str, str] = {}
    prev, prev_version, prev_path = x, x._version, None
    for s in steps:
        s.passthrough = s.output is s.input is not None and s.output_version == s.input_version
        why = None if s.passthrough else _unsupported_reason(s.module)
        if why is not None:
            problems.setdefault(s.path, why)
        if s.input is None or s.input is not prev or s.input_version != prev_version:
            c = _culprit(modules, prev_path, s.path)
            problems.setdefault(
                c, f"{type(modules[c]).__name__} (not a chain: skip connection, branch or op)"
            )
        prev = s.output
        prev_version = s.output_version if isinstance(s.output, torch.Tensor) else -2
        prev_path = s.path
    if out is not prev or out_version != prev_version:  # a container target changed its leaves' output
        problems.setdefault(path, f"{type(target).__name__} (not a chain: skip connection, branch or op)")
    return problems


def _group_problems(problems: dict[str, str], shown: int = 3) -> str:
    """``"ReLU6 at a, b, c (+4 more); AvgPool2d at d"``: paths grouped by reason, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for path, why in problems.items():
        groups.setdefault(why, []).append(path or "<root>")
    parts = []
    for why, paths in groups.items():
        more = f" (+{len(paths) - shown} more)" if len(paths) > shown else ""
        parts.append(f"{why} at {', '.join(paths[:shown])}{more}")
    return "; ".join(parts)
