"""Rendering maps as pictures: the white mask, the colour map, flat maps, thresholds, sizes."""

import numpy as np
import pytest

from convis_db.engine.render import normalise_map, render


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)


def test_mask_blends_from_white_to_the_image(image):
    saliency = np.zeros((30, 40))
    saliency[:, 20:] = 1.0  # right half salient, at half the working resolution
    out = render(image, saliency, "mask")
    assert out.shape == image.shape
    assert (out[:, :35] == 255).all()                      # not salient: white
    np.testing.assert_array_equal(out[:, 45:], image[:, 45:])  # salient: the image itself


def test_flat_map_is_drawn_at_its_level_not_as_absent(image):
    flat = np.full((30, 40), 0.75)
    assert np.allclose(normalise_map(flat), 0.75)
    out = render(image, flat, "mask").astype(float)
    np.testing.assert_allclose(out, 0.75 * image + 0.25 * 255, atol=1)


def test_threshold_hides_low_values_and_heatmap_colours(image):
    ramp = np.tile(np.linspace(0, 1, 40), (30, 1))
    out = render(image, ramp, "mask", threshold=0.5)
    assert (out[:, :30] == 255).all()
    heat = render(image, ramp, "heatmap")
    assert heat.shape == image.shape and heat.dtype == np.uint8
    assert not np.array_equal(heat[:, 0], heat[:, -1])
    with pytest.raises(ValueError):
        render(image, ramp, "sepia")
