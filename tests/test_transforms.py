"""PairedAugment: exact crop/pad/flip values, one geometry for every modality, reproducible randomness."""
import numpy as np
import pytest

from crossmodal.data.transforms import Geometry, PairedAugment, SampleRandom, apply_geometry
from crossmodal.errors import ConfigError


def _image(c=3, h=32, w=32):
    return (np.arange(c * h * w, dtype=np.float32).reshape(c, h, w) + 1.0)  # no zeros: padding is visible


def test_sample_random_is_a_function_of_its_key():
    def draws(*key):
        rng = SampleRandom(*key)
        return [rng.uniform() for _ in range(5)]

    assert draws(0, 3, 7) == draws(0, 3, 7)
    assert draws(0, 3, 7) != draws(0, 4, 7)
    assert draws(0, 3, 7) != draws(1, 3, 7)
    assert draws(0, 3, 7) != draws(0, 3, 8)


def test_sample_random_is_uniform_over_keys():
    values = np.array([SampleRandom(0, 0, i).uniform() for i in range(4000)])
    assert values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 0.02
    ints = np.array([SampleRandom(5, 1, i).integer(0, 9) for i in range(4000)])
    counts = np.bincount(ints, minlength=9)
    assert len(counts) == 9 and counts.min() > 4000 / 9 * 0.8


def test_apply_geometry_zero_fills_outside_the_image_and_flips():
    image = _image(1, 4, 4)  # values 1..16, row-major
    out = apply_geometry(image, Geometry(top=-1, left=1, height=3, width=3, out_height=3, out_width=3, flip=False))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [2, 3, 4], [6, 7, 8]])
    flipped = apply_geometry(image, Geometry(-1, 1, 3, 3, 3, 3, flip=True))
    np.testing.assert_array_equal(flipped[0], [[0, 0, 0], [4, 3, 2], [8, 7, 6]])
    assert flipped.flags["C_CONTIGUOUS"]
    left_padded = apply_geometry(image, Geometry(0, -1, 2, 3, 2, 3, flip=True))
    np.testing.assert_array_equal(left_padded[0], [[2, 1, 0], [6, 5, 0]])


def test_cifar_crop_covers_every_offset_and_pads_with_zeros():
    augment = PairedAugment(crop=32, padding=4, hflip=True)
    geometries = [augment.sample_geometry(SampleRandom(0, 0, i), 32, 32) for i in range(600)]
    assert {g.top for g in geometries} == set(range(-4, 5))
    assert {g.left for g in geometries} == set(range(-4, 5))
    assert 0.4 < np.mean([g.flip for g in geometries]) < 0.6
    image = _image()
    corner = next(g for g in geometries if g.top == -4 and g.left == -4 and not g.flip)
    out = apply_geometry(image, corner)
    assert out.shape == (3, 32, 32)
    assert (out[:, :4, :] == 0).all() and (out[:, :, :4] == 0).all()
    np.testing.assert_array_equal(out[:, 4:, 4:], image[:, :28, :28])


def test_every_modality_gets_the_same_geometry():
    image = _image(3, 24, 24)
    arrays = {"rgb": image, "depth": 3.0 * image[:1], "segmentation": image[0].astype(np.int16) % 7}
    augment = PairedAugment(crop=20, padding=4, hflip=True)
    for i in range(20):
        out = augment(arrays, SampleRandom(1, 2, i))
        np.testing.assert_array_equal(out["depth"], 3.0 * out["rgb"][:1])
        np.testing.assert_array_equal(out["segmentation"], out["rgb"][0].astype(np.int16) % 7)
        assert out["segmentation"].dtype == np.int16


def test_random_resized_crop_box_and_pairing():
    augment = PairedAugment(random_resized_crop=24, scale=(0.25, 1.0), hflip=True)
    for i in range(100):
        g = augment.sample_geometry(SampleRandom(0, 0, i), 48, 40)
        assert 0 <= g.top and g.top + g.height <= 48 and 0 <= g.left and g.left + g.width <= 40
        assert 0.2 < g.height * g.width / (48 * 40) <= 1.05  # rounding of w, h moves the area a little
        assert (g.out_height, g.out_width) == (24, 24)
    image = _image(2, 48, 40)
    arrays = {"a": image, "b": 2.0 * image}
    for i in range(10):  # both nearest: the same pixels must land in the same places
        out = augment(arrays, SampleRandom(0, 0, i), nearest=("a", "b"))
        assert out["a"].shape == (2, 24, 24)
        np.testing.assert_array_equal(out["b"], 2.0 * out["a"])


def test_random_resized_crop_bilinear_keeps_a_constant_image_constant_and_nearest_keeps_labels():
    augment = PairedAugment(random_resized_crop=40, scale=(0.1, 0.5))
    labels = (np.arange(32 * 32).reshape(32, 32) % 5).astype(np.int16)
    out = augment({"rgb": np.full((3, 32, 32), 0.25, np.float32), "segmentation": labels}, SampleRandom(0, 0, 1))
    np.testing.assert_allclose(out["rgb"], 0.25, atol=1e-6)
    assert set(np.unique(out["segmentation"])) <= set(range(5))


def test_random_resized_crop_falls_back_to_a_centred_box():
    augment = PairedAugment(random_resized_crop=8, scale=(1.0, 1.0), ratio=(2.0, 2.0))  # never fits 16x16
    g = augment.sample_geometry(SampleRandom(0, 0, 0), 16, 16)
    assert (g.top, g.left, g.height, g.width) == (4, 0, 8, 16)


def test_no_augment_options_is_identity():
    image = _image(3, 8, 8)
    out = PairedAugment()({"rgb": image}, SampleRandom(0, 0, 0))
    np.testing.assert_array_equal(out["rgb"], image)


@pytest.mark.parametrize("kwargs", [
    {"crop": 32, "random_resized_crop": 32},
    {"crop": 0},
    {"crop": 32.0},
    {"padding": 4},
    {"crop": 32, "padding": -1},
    {"random_resized_crop": 96, "scale": (0.5, 0.1)},
    {"random_resized_crop": 96, "scale": (0.1,)},
    {"random_resized_crop": 96, "ratio": (0.0, 1.0)},
])
def test_bad_options_raise_config_error(kwargs):
    with pytest.raises(ConfigError, match="augment"):
        PairedAugment(**kwargs)


def test_crop_larger_than_padded_image_is_refused():
    with pytest.raises(ConfigError, match="does not fit data.h5:train images of 32x32"):
        PairedAugment(crop=48, padding=4).check_size(32, 32, where="data.h5:train")
    PairedAugment(crop=40, padding=4).check_size(32, 32)  # exactly fits


def test_yaml_lists_become_tuples():
    from_yaml = PairedAugment(random_resized_crop=96, scale=[0.2, 1], ratio=[0.75, 1.25])
    assert from_yaml == PairedAugment(random_resized_crop=96, scale=(0.2, 1.0), ratio=(0.75, 1.25))
    assert hash(from_yaml) == hash(PairedAugment(random_resized_crop=96, scale=(0.2, 1.0), ratio=(0.75, 1.25)))
