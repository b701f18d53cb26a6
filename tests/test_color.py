"""crossmodal.color: OpenCV's Lab agrees with kornia's on real pixels, and lab_to_rgb inverts it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from crossmodal.color import lab_to_rgb, rgb_to_lab

# OpenCV's float RGB2Lab tabulates the gamma and cube root; over all 2**24 8-bit colours it is at
# most 0.19 (L*) and 0.47 (a*, b*) from the exact formula that kornia evaluates (measured once,
# exhaustively). These bounds, a fifth of a just-noticeable difference, are what the tests allow.
MAX_DIFF_L, MAX_DIFF_AB = 0.2, 0.5


@pytest.fixture(scope="module")
def real_pixels() -> np.ndarray:
    """(4, 256, 256, 3) uint8 RGB: centre crops of photographs bundled with scikit-image (real colour, offline)."""
    import skimage.data

    crops = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        image = getattr(skimage.data, name)()[..., :3]
        top, left = (image.shape[0] - 256) // 2, (image.shape[1] - 256) // 2
        crops.append(image[top:top + 256, left:left + 256])
    return np.stack(crops)


def test_opencv_lab_matches_kornia_on_real_pixels(real_pixels):
    import kornia

    torch.set_num_threads(1)
    ours = rgb_to_lab(real_pixels)  # (N, H, W, 3)
    unit = torch.from_numpy(real_pixels).permute(0, 3, 1, 2).float() / 255.0
    theirs = kornia.color.rgb_to_lab(unit).permute(0, 2, 3, 1).numpy()
    diff = np.abs(ours - theirs).reshape(-1, 3).max(axis=0)
    assert diff[0] <= MAX_DIFF_L, f"L* differs by {diff[0]:.3f}"
    assert diff[1:].max() <= MAX_DIFF_AB, f"a*/b* differ by {diff[1:]}"
    # and the conversion is not trivially close: real colour spans a wide Lab range
    assert ours[..., 0].max() - ours[..., 0].min() > 80 and np.abs(ours[..., 1:]).max() > 40


def test_round_trip_through_stored_float16_recovers_rgb(real_pixels):
    lab = rgb_to_lab(real_pixels)
    assert np.abs(lab_to_rgb(lab).astype(int) - real_pixels).max() <= 1  # float32 Lab: rounding only
    stored = lab.astype(np.float16)  # what prepare keeps for L and ab
    back = lab_to_rgb(stored).astype(int)
    assert np.abs(back - real_pixels).max() <= 1


def test_reference_colours():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [128, 128, 128]]], np.uint8)  # (1, 4, 3)
    lab = rgb_to_lab(rgb)[0]
    expected = np.array([[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [53.59, 0, 0]])  # CIE, D65, sRGB
    np.testing.assert_allclose(lab, expected, atol=0.5)


def test_single_image_equals_batch_and_keeps_shape():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 5, 7, 3), np.uint8)
    lab = rgb_to_lab(batch)
    assert lab.shape == (3, 5, 7, 3) and lab.dtype == np.float32
    np.testing.assert_array_equal(rgb_to_lab(batch[1]), lab[1])
    assert lab_to_rgb(lab).shape == batch.shape and lab_to_rgb(lab).dtype == np.uint8


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_lab(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rgb_to_lab(np.zeros((4, 4), np.uint8))
