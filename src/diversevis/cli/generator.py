"""``diversevis train-generator``: train (and cache) the DeePSiM-style image generator of DGN-AM and PPGN."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from diversevis.cli.common import nonneg_float, nonneg_int, positive_int

__all__ = ["COMMANDS", "add_train_generator_parser", "run"]


def add_train_generator_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train-generator`` subcommand to ``sub`` and return its parser."""
    from diversevis.methods.generator import PRESETS

    p = sub.add_parser(
        "train-generator",
        help="train the feature-inverting image generator (and its code DAE) that DGN-AM and PPGN optimise",
        description="Train a DeePSiM-style generator G(h) that inverts a frozen network's code h = E(x) "
        "(pixel + feature losses, optionally adversarial) and a denoising autoencoder on the codes (the PPGN "
        "prior), on random crops of natural photographs, and cache it under the preset's name, where "
        "DGN-AM and PPGN find it. With --out, also writes generator.pt, reconstructions.png (held-out "
        "patches over their reconstructions) and metrics.json (the run and the held-out PSNR and feature "
        "error against a mean patch, the patch's mean colour and a blur).",
        epilog="Example: diversevis train-generator --preset default --out runs/generator-default",
    )
    p.add_argument("--preset", default="default",
                   help=f"named settings: {', '.join(PRESETS)} (default: default)")  # fmt: skip
    p.add_argument(
        "--model", "-m", default=None, help="zoo spec of the feature network (default: the preset's)"
    )
    p.add_argument("--layer", "-l", default=None, help="code layer, e.g. pool4 (default: the preset's)")
    p.add_argument("--size", type=positive_int, default=None, help="patch side in px (default: the preset's)")
    p.add_argument("--steps", type=positive_int, default=None, help="Adam steps (default: the preset's)")
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="patches per step (default: the preset's)"
    )
    p.add_argument("--adversarial", type=nonneg_float, default=None,
                   help="weight of the adversarial loss, 0 for none (default: the preset's)")  # fmt: skip
    p.add_argument("--seed", type=nonneg_int, default=None, help="random seed (default: the preset's)")
    p.add_argument("--images", metavar="DIR", default=None,
                   help="train on this folder of images instead of the bundled photos")  # fmt: skip
    p.add_argument(
        "--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)"
    )
    p.add_argument("--out", "-o", default=None,
                   help="also write generator.pt, reconstructions.png and metrics.json here")  # fmt: skip
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return p


def _config(args: argparse.Namespace):
    from diversevis.methods.generator.config import _resolve_config

    cfg = _resolve_config(args.preset)
    flags = {"model": args.model, "code_layer": args.layer, "size": args.size, "steps": args.steps,
             "batch_size": args.batch_size, "adversarial_weight": args.adversarial, "seed": args.seed}  # fmt: skip
    changes = {k: v for k, v in flags.items() if v is not None}
    if "code_layer" in changes and args.layer not in cfg.feature_layers:
        changes.setdefault("feature_layers", cfg.feature_layers)
    return cfg.replace(**changes) if changes else cfg


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis train-generator``; returns the exit status."""
    from diversevis.core.devices import check_device
    from diversevis.methods.generator import (
        code_shape_of,
        evaluate_generator,
        feature_network,
        generator_cache_path,
        save_generator,
        train_generator,
    )

    check_device(args.device)
    cfg = _config(args)
    net = feature_network(cfg, device=args.device)
    code_shape_of(cfg, net)  # bad layer / size: fail before training
    if args.images is not None:
        from diversevis.images.naturals import natural_images

        natural_images(args.images)  # a bad folder fails now
    t0 = time.perf_counter()
    log = (lambda line: None) if args.quiet else print
    gen = train_generator(cfg, images=args.images, device=args.device, progress=not args.quiet, log=log)
    cached = save_generator(gen, generator_cache_path(args.preset, cfg, images=args.images))
    print(f"cached {cached}")
    if args.out:
        _write_out(Path(args.out), gen, net, args, cfg, time.perf_counter() - t0, cached, evaluate_generator)
    return 0


def _write_out(out: Path, gen, net, args, cfg, seconds: float, cached: Path, evaluate) -> None:
    """``generator.pt``, ``reconstructions.png`` and ``metrics.json`` in ``out``; prints the scores."""
    import torch

    from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
    from diversevis.core.result import image_grid
    from diversevis.methods.generator import held_out_patches, save_generator

    out = output_dir(out)
    save_generator(gen, out / "generator.pt")
    scores = evaluate(gen, net, images=args.images)
    x = held_out_patches(cfg, 16, images=args.images).to(gen.code_scale.device)
    with torch.no_grad():
        y = gen(gen.encode(net, x))
    rows = torch.cat([x[:8], y[:8], x[8:], y[8:]]).cpu()
    labels = (["patch"] * 8 + ["G(E(x))"] * 8) * 2
    title = f"held-out patches (rows 1, 3) and reconstructions (rows 2, 4): {cfg.model} {cfg.code_layer}"
    atomic_write_bytes(out / "reconstructions.png", image_grid(rows, labels, title=title, tile=96, columns=8))
    metrics = {k: v for k, v in gen.metrics.items() if k != "history"}
    spec = {"command": "train-generator", "preset": args.preset, "config": cfg.to_dict(), "images": args.images,
            "device": str(gen.code_scale.device), "seconds_total": seconds, "cache": str(cached)}  # fmt: skip
    atomic_write_json(out / "metrics.json", {"spec": spec, "training": metrics, "history": gen.metrics.get("history"),
                                             "evaluation": scores})  # fmt: skip
    psnr, err, sharp = scores["psnr"], scores["feature_error"], scores["sharpness"]
    print(
        f"held-out patches ({scores['n']}): PSNR dB / relative code error / sharpness (1 = as sharp as the patch)"
    )
    for key in ("generator", "mean_patch", "mean_colour", "blur"):
        print(f"  {key:12s} {psnr[key]:6.2f}  {err[key]:.3f}  {sharp[key]:.3f}")
    print(f"  wrote {out}/ (generator.pt, reconstructions.png, metrics.json)")


#: ``(add_parser, run)`` of each subcommand of this module, in ``diversevis --help`` order.
COMMANDS = ((add_train_generator_parser, run),)
