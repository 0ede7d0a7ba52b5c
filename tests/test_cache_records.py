"""Cached records (priors, generators) are saved as plain types and read back with ``weights_only=True``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diversevis as dv
from diversevis.core.cache import atomic_save_torch, read_torch_record, weights_only_plain


def test_numpy_and_torch_scalars_become_plain_numbers_that_weights_only_load_accepts(tmp_path):
    meta = {"steps": np.int64(300), "psnr": np.float32(20.25), "ok": np.bool_(True), "shape": (256, 4, 4),
            "torch": torch.__version__, 3: None}  # fmt: skip
    plain = weights_only_plain(meta)
    assert plain == {"steps": 300, "psnr": pytest.approx(20.25), "ok": True, "shape": [256, 4, 4],
                     "torch": str(torch.__version__), "3": None}  # fmt: skip
    assert type(plain["steps"]) is int and type(plain["psnr"]) is float and type(plain["ok"]) is bool
    path = tmp_path / "record.pt"
    atomic_save_torch(path, {"format": "test", "version": 2, "meta": plain})
    assert read_torch_record(path, "test", 2, "test")["meta"] == plain


def test_a_record_of_another_kind_or_version_is_refused_by_name(tmp_path):
    path = tmp_path / "record.pt"
    atomic_save_torch(path, {"format": "prior", "version": 1})
    with pytest.raises(dv.DiversevisError, match="not a diversevis generator file"):
        read_torch_record(path, "generator", 1, "generator")
    with pytest.raises(dv.DiversevisError, match="format version 1, expected 2"):
        read_torch_record(path, "prior", 2, "prior")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(dv.DiversevisError, match="cannot read prior file"):
        read_torch_record(tmp_path / "junk.pt", "prior", 1, "prior")
