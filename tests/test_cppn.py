"""The implicit (CPPN) generator of invariance manifolds: periodic latents, fixed contrast, reloadable."""

import torch

from diversevis.core.cppn import (
    ImplicitGenerator,
    affine_coords,
    latent_grid,
    periodic_embedding,
    pixel_coords,
)


def test_a_latent_loop_closes_z0_and_z1_give_the_same_image():
    g = ImplicitGenerator(1, (12, 20), dim=1, norm=2.0, seed=0)
    images = g.render(torch.tensor([[0.0], [1.0], [0.5]]))
    assert torch.allclose(images[0], images[1], atol=1e-5)
    assert not torch.allclose(images[0], images[2], atol=1e-2)


def test_every_image_has_the_requested_contrast_around_grey():
    g = ImplicitGenerator(3, 16, dim=2, norm=3.5, seed=1)
    g.set_latents(latent_grid(2, 3))
    x = g()
    assert x.shape == (9, 3, 16, 16)
    assert torch.allclose((x - 0.5).flatten(1).norm(dim=1), torch.full((9,), 3.5), atol=1e-4)


def test_pixel_coords_keep_square_pixels_on_a_non_square_image():
    c = pixel_coords((10, 20))
    assert c.shape == (10, 20, 2)
    assert torch.isclose(c[..., 0].max(), torch.tensor(1 - 1 / 20))
    assert torch.isclose(c[..., 1].max(), torch.tensor(0.5 - 1 / 20))
    step_x, step_y = c[0, 1, 0] - c[0, 0, 0], c[1, 0, 1] - c[0, 0, 1]
    assert torch.isclose(step_x, step_y)


def test_latent_grid_is_even_in_the_unit_cube_and_the_embedding_is_on_circles():
    z = latent_grid(2, 4)
    assert z.shape == (16, 2) and z.min() == 0 and z.max() == 0.75
    e = periodic_embedding(z, harmonics=2)
    assert e.shape == (16, 8)
    per_dim = e.reshape(16, 2, 2, 2)  # (B, dim, cos|sin, harmonic)
    cos, sin = per_dim[:, :, 0], per_dim[:, :, 1]
    assert torch.allclose(cos**2 + sin**2, torch.ones(16, 2, 2), atol=1e-6)


def test_the_identity_affine_map_leaves_the_images_unchanged_and_a_shift_moves_them():
    g = ImplicitGenerator(1, 16, dim=1, norm=2.0, seed=2)
    z = torch.tensor([[0.25]])
    eye, zero = torch.eye(2), torch.zeros(2)
    assert torch.equal(g.render(z, affine_coords(g.coords, eye, zero)), g.render(z))
    moved = g.render(z, affine_coords(g.coords, eye, torch.tensor([2 / 16, 0.0])))
    # a shift of one pixel (2 / 16 coordinate units) in x moves the pattern one pixel to the left
    assert torch.allclose(moved[..., :, :-1], g.render(z)[..., :, 1:], atol=0.05)


def test_a_saved_generator_reloads_bit_for_bit(tmp_path):
    g = ImplicitGenerator(1, (8, 12), dim=2, norm=1.0, seed=3)
    g.set_latents(latent_grid(2, 5))
    g.save(tmp_path / "generator.pt")
    h = ImplicitGenerator.load(tmp_path / "generator.pt")
    assert torch.equal(h(), g())
