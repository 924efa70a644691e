import torch

from wsidistill.training.augment import RUIFROK_HED, hed_jitter


def test_zero_strength_is_the_identity_and_draws_nothing():
    images = torch.rand(2, 3, 4, 4)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(hed_jitter(images, 0.0, generator), images)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())


def test_jitter_rescales_stain_concentrations_by_its_definition():
    # A pure-haematoxylin pixel: optical density proportional to the H stain vector.
    stains = torch.nn.functional.normalize(RUIFROK_HED, dim=1)
    density = 0.8 * stains[0]
    image = torch.exp(-density).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    generator = torch.Generator().manual_seed(3)
    out = hed_jitter(image, 0.2, generator)
    replay = torch.Generator().manual_seed(3)
    scale = 1 + (torch.rand(1, 3, generator=replay) * 2 - 1) * 0.2
    shift = (torch.rand(1, 3, generator=replay) * 2 - 1) * 0.2
    concentration = torch.tensor([0.8, 0.0, 0.0]) * scale[0] + shift[0]
    expected = torch.exp(-(concentration @ stains)).clamp(0, 1)
    torch.testing.assert_close(out[0, :, 0, 0], expected, atol=1e-5, rtol=1e-5)


def test_jitter_is_per_sample_and_reproducible():
    images = torch.rand(4, 3, 8, 8) * 0.8 + 0.1
    a = hed_jitter(images, 0.1, torch.Generator().manual_seed(1))
    b = hed_jitter(images, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0] - images[0], a[1] - images[1])
    assert a.min() >= 0 and a.max() <= 1
