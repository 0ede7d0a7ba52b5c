"""Aligning invariance manifolds across units, and clustering units by them (method.md E.2).

Known answers: a complex cell's manifold, rotated and shifted by the fitted map, drives a copy of the
cell rotated and shifted by a known amount as well as that copy's own MEI, and the map is the known
one; a population of simple and complex cells splits into the two types.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diversevis.cli import main
from diversevis.core.errors import DiversevisError
from diversevis.methods.manifold import manifold
from diversevis.methods.manifold_align import AlignSettings, align, transform_matrix
from diversevis.models.synthetic import population_network, random_population
from diversevis.study.manifold_cluster import cluster_similarity, manifold_cluster, symmetrize

SIZE = 16
NORM = 2.0
FAST = dict(norm=NORM, per_dim=8, max_iter=600, calibrate=False)


def _coords(px: tuple[float, float]) -> np.ndarray:
    """A pixel offset from the image centre in the generator's coordinates (longer side spans 2)."""
    return np.array(px) * 2 / SIZE


def test_the_fitted_map_is_the_known_rotation_and_shift_and_drives_the_moved_cell_fully():
    theta, turn, offset = 0.3, 0.6, (2.0, -1.5)
    cells = [
        dict(kind="complex", theta=theta, wavelength=6.0, center=(0.0, 0.0)),
        dict(kind="complex", theta=theta + turn, wavelength=6.0, center=offset),
    ]
    net = population_network(cells, SIZE, 1)
    a = manifold(net, "response", 0, seed=0, **FAST)
    gen_state = {k: v.clone() for k, v in a.generator.state_dict().items()}
    al = align(net, "response", a.generator, [1], [NORM**2], settings=AlignSettings(reflect=False))[0]
    # B(c) = A(M c + t): A's carrier k_A seen from B is M^T k_A, parallel to B's carrier (mod pi) ...
    k_b = al.matrix.T @ np.array([math.cos(theta), math.sin(theta)])
    err = (math.atan2(k_b[1], k_b[0]) - (theta + turn) + math.pi / 2) % math.pi - math.pi / 2
    assert abs(err) < 0.1
    assert abs(np.linalg.norm(k_b) - 1) < 0.1  # same wavelength: scale 1
    # ... and B's centre lands on A's
    assert np.linalg.norm(al.matrix @ _coords(offset) + np.array(al.shift) - _coords((0, 0))) < 0.15
    # B's mean ratio on A's moved manifold is about A's own (< 1: the manifold trades activation for spread)
    assert al.ratio > 0.85 and al.ratio > a.mean_ratio - 0.1 and al.min_ratio > 0.7
    assert all(torch.equal(v, a.generator.state_dict()[k]) for k, v in gen_state.items())  # A's untouched


def test_transform_matrix_composes_rotation_scale_and_reflection():
    m = transform_matrix(torch.tensor([math.pi / 2]), torch.tensor([[math.log(2.0)]]), torch.tensor([True]))
    # reflect y, scale 2, rotate 90 degrees: (1, 0) -> (0, 2); (0, 1) -> (0, -2) -> (2, 0)
    assert torch.allclose(m[0], torch.tensor([[0.0, 2.0], [2.0, 0.0]]), atol=1e-6)


def test_min_symmetrisation_keeps_types_apart_that_drive_each_other_one_way_only():
    # simple (0, 1) -> anything: high; complex (2, 3) -> simple: low (a phase loop on a linear cell)
    s = np.array([[1.0, 0.9, 0.9, 0.9], [0.9, 1.0, 0.9, 0.9], [0.1, 0.2, 1.0, 0.9], [0.2, 0.1, 0.9, 1.0]])
    sym = symmetrize(s)
    assert np.allclose(sym, sym.T) and sym[0, 2] == pytest.approx(0.1)
    labels, k, sil = cluster_similarity(sym)
    assert k == 2 and list(labels) == [0, 0, 1, 1] and sil > 0.5
    assert cluster_similarity(sym, 1)[0].tolist() == [0, 0, 0, 0]


@pytest.mark.slow
def test_a_population_of_simple_and_complex_cells_splits_into_the_two_types(tmp_path):
    from sklearn.metrics import adjusted_rand_score

    cells = random_population(6, 6, SIZE, seed=1)
    net = population_network(cells, SIZE, 1)
    res = manifold_cluster(net, "response", "all", tmp_path, manifold_kwargs=FAST)
    ari = adjusted_rand_score([c["kind"] for c in cells], res.labels)
    assert ari >= 0.9, (ari, res.labels, res.similarity.round(2))
    blob = json.loads((tmp_path / "manifold_cluster.json").read_text())
    assert blob["labels"] == [int(x) for x in res.labels] and blob["n_clusters"] == res.n_clusters
    assert (
        all((tmp_path / g).is_file() for g in blob["galleries"]) and (tmp_path / "similarity.png").is_file()
    )
    assert all((tmp_path / d / "manifold.json").is_file() for d in blob["unit_dirs"].values())


@pytest.fixture(scope="module")
def pair():
    cells = [dict(kind="simple", theta=0.2, wavelength=6.0), dict(kind="complex", theta=1.0, wavelength=5.0)]
    return population_network(cells, SIZE, 1)


def test_clustering_refuses_unknown_layers_single_units_and_bad_cluster_counts(pair):
    with pytest.raises(DiversevisError, match="layer"):
        manifold_cluster(pair, "nope", "all", manifold_kwargs=FAST)
    with pytest.raises(DiversevisError, match="at least 2 units"):
        manifold_cluster(pair, "response", [0], manifold_kwargs=FAST)
    for k in (0, 3, True, 1.5):
        with pytest.raises(DiversevisError, match="number of clusters"):
            manifold_cluster(pair, "response", "all", clusters=k, manifold_kwargs=FAST)
    with pytest.raises(DiversevisError, match="at least 3 units"):
        manifold_cluster(pair, "response", "all", manifold_kwargs=FAST)
    with pytest.raises(DiversevisError, match="one MEI activation per unit"):
        align(pair, "response", torch.nn.Linear(1, 1), [0, 1], [1.0])


CLI_MODEL = [
    "--model", "diversevis.models.synthetic:population", "--model-arg", "n_simple=2", "--model-arg",
    "n_complex=2", "--mean", "0.5", "--std", "1", "--in-channels", "1", "--input-size", "16",
]  # fmt: skip


def test_cli_writes_clusters_galleries_and_page_and_resumes(tmp_path, capsys):
    out = tmp_path / "mc"
    args = ["manifold-cluster", *CLI_MODEL, "--layer", "response", "--units", "all", "--norm", "2",
            "--max-iter", "300", "--per-dim", "6", "--align-iter", "40", "--clusters", "2", "-q", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    blob = json.loads((out / "manifold_cluster.json").read_text())
    assert blob["units"] == [0, 1, 2, 3] and blob["n_clusters"] == 2 and len(blob["galleries"]) == 2
    assert (out / "similarity.png").is_file() and (out / "u3" / "generator.pt").is_file()
    assert "2 clusters" in capsys.readouterr().out
    assert main(args) == 0  # a rerun loads every manifold and alignment
    assert json.loads((out / "manifold_cluster.json").read_text())["spec"]["manifold_seconds"] == {}


@pytest.mark.parametrize(
    "extra, message",
    [(["--layer", "nope"], "layer"), (["--layer", "response", "--units", "2"], "at least 2 units"),
     (["--layer", "response", "--clusters", "9"], "number of clusters")],
)  # fmt: skip
def test_cli_usage_errors_exit_2_without_traceback(tmp_path, capsys, extra, message):
    assert main(["manifold-cluster", *CLI_MODEL, *extra, "--norm", "2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
