"""`crossmodal inspect`: the summary it prints, the contact sheet it writes, and its exit codes."""
import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import app
from conftest import depth_from_rgb
from crossmodal.data.sheet import GAP, HEADER_HEIGHT, LABEL_WIDTH, TILE, segmentation_palette

ALL = ("rgb", "L", "ab", "depth")


def _inspect(*args):
    return CliRunner().invoke(app, ["inspect", *map(str, args)])


def _tile(sheet: np.ndarray, row: int, col: int, size: int = TILE) -> np.ndarray:
    """The (size, size, 3) tile at grid position (row, col) of a sheet of square tiles."""
    y, x = HEADER_HEIGHT + row * (size + GAP), LABEL_WIDTH + col * (size + GAP)
    return sheet[y : y + size, x : x + size].astype(np.int64)


def test_summary_names_splits_modalities_shapes_and_labels(make_prepared):
    path = make_prepared(modalities=ALL, with_segmentation=True, unlabeled=2)
    result = _inspect(path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "  train     40 samples" in out and "  test      20 samples" in out
    assert out.index("  train     40") < out.index("  test      20")  # train first, whatever HDF5's order
    for line in ("rgb           (3, 16, 16)       uint8", "ab            (2, 16, 16)       float16",
                 "depth         (1, 16, 16)       float32", "segmentation  (16, 16)          int16"):
        assert line in out
    assert "classes     4: class0, class1, class2, class3" in out
    # rows 0 and N-1 of each split are unlabeled; the rest cycle through the 4 classes
    assert "label         class0 9, class1 10, class2 10, class3 9; 2 unlabeled (-1)" in out  # train
    assert "label         class0 4, class1 5, class2 5, class3 4; 2 unlabeled (-1)" in out  # test
    assert "provenance\n  reader: tests/conftest.py" in out


def test_many_classes_are_summarised(make_prepared):
    path = make_prepared(modalities=("rgb",), num_classes=30, splits={"train": 45})
    out = _inspect(path).output
    assert "classes     30: class0, class1, class2, class3, class4, class5, class6, class7, ... (+22 more)" in out
    assert "30 of 30 classes present, min 1 (class15), max 2 (class0)" in out


def test_sheet_grid_and_what_each_row_shows(make_prepared, tmp_path):
    path = make_prepared(modalities=ALL, with_segmentation=True)
    out = tmp_path / "sheets" / "sheet.png"
    result = _inspect(path, "--sheet", out, "--n", 5)
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(out))
    rows, cols = 5, 5  # rgb, L, ab, depth, seg x 5 samples of the 20-row test split
    assert sheet.shape == (HEADER_HEIGHT + rows * (TILE + GAP), LABEL_WIDTH + cols * (TILE + GAP), 3)
    assert [p.name for p in out.parent.iterdir()] == ["sheet.png"]  # no temporary file left

    with h5py.File(path) as f:
        rgb = f["test/rgb"][0]  # column 0 is test row 0
        segmentation = f["test/segmentation"][0]
    scale = TILE // 16
    centre = slice(scale // 2, None, scale)  # one pixel per source pixel of a nearest-upscaled tile
    np.testing.assert_array_equal(_tile(sheet, 0, 0)[centre, centre], rgb.transpose(1, 2, 0)[:, :, ::-1])
    grey = _tile(sheet, 1, 0)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    ab = _tile(sheet, 2, 0)
    assert np.abs(ab[..., 0] - ab[..., 2]).mean() > 30  # chrominance shown in colour, not grey
    depth = _tile(sheet, 3, 0)[centre, centre]
    missing = depth_from_rgb(rgb)[0] == 0
    assert missing.any() and (depth[missing] == 0).all() and (depth[~missing].sum(-1) > 0).all()
    seg = _tile(sheet, 4, 0)[centre, centre]
    labeled = segmentation > 0
    np.testing.assert_array_equal(seg[~labeled], rgb.transpose(1, 2, 0)[:, :, ::-1][~labeled])
    expected = (0.5 * rgb.transpose(1, 2, 0)[:, :, ::-1] + 0.5 * segmentation_palette(4)[segmentation]).astype(np.uint8)
    np.testing.assert_array_equal(seg[labeled], expected[labeled])


def test_sheet_of_a_chosen_split_and_tile_aspect(make_prepared, tmp_path):
    path = make_prepared(modalities=("rgb",), splits={"train": 3, "unlabeled": 6})
    out = tmp_path / "s.png"
    result = _inspect(path, "--sheet", out, "--split", "train")
    assert result.exit_code == 0 and "  unlabeled 6 samples" in result.output
    assert "label         none (all -1)" in result.output
    assert cv2.imread(str(out)).shape == (HEADER_HEIGHT + TILE + GAP, LABEL_WIDTH + 3 * (TILE + GAP), 3)


def test_palette_is_fixed_and_distinct():
    palette = segmentation_palette(14)
    assert (palette[0] == 0).all()
    assert len({tuple(c) for c in palette}) == 14
    np.testing.assert_array_equal(segmentation_palette(20)[:14], palette)


@pytest.mark.parametrize("problem", ["missing", "not_prepared", "bad_split", "not_png"])
def test_user_errors_exit_2_with_one_line(make_prepared, tmp_path, problem):
    path = make_prepared(modalities=("rgb",))
    args = {
        "missing": [tmp_path / "nope.h5"],
        "not_prepared": [tmp_path / "plain.h5"],
        "bad_split": [path, "--sheet", tmp_path / "s.png", "--split", "val"],
        "not_png": [path, "--sheet", tmp_path / "s.jpg"],
    }[problem]
    if problem == "not_prepared":
        with h5py.File(args[0], "w") as f:
            f["x"] = np.zeros(3)
    result = _inspect(*args)
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    expected = {
        "missing": "nope.h5: no such file",
        "not_prepared": "plain.h5: not a crossmodal prepared file",
        "bad_split": "no split 'val'; splits: test, train",
        "not_png": "s.jpg: contact sheets are PNG files",
    }[problem]
    assert message.startswith("error: ") and expected in message
    assert not (tmp_path / "s.png").exists()


def test_prepare_nyu18_then_inspect_sheet(shared_data, tmp_path):
    prepared, sheet_path = tmp_path / "nyu18.h5", tmp_path / "nyu18.png"
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "rgbd", str(shared_data / "nyu18"), "--out", str(prepared),
                                 "--modalities", "rgb,depth,hha"])
    assert result.exit_code == 0, result.output
    result = _inspect(prepared, "--sheet", sheet_path)
    assert result.exit_code == 0, result.output
    for line in ("  train     10 samples", "  test      8 samples", "rgb           (3, 480, 640)     uint8",
                 "depth         (1, 480, 640)     float32", "hha           (3, 480, 640)     uint8",
                 "classes     14: unlabeled, bed, books, ceiling", "label         none (all -1)"):
        assert line in result.output

    sheet = cv2.imread(str(sheet_path))
    tile_h, tile_w = 96, 128  # 480 x 640 frames, longer side TILE
    assert sheet.shape == (HEADER_HEIGHT + 4 * (tile_h + GAP), LABEL_WIDTH + 8 * (tile_w + GAP), 3)  # rgb, depth, hha, seg
    y, x = HEADER_HEIGHT, LABEL_WIDTH
    expected = cv2.resize(cv2.imread(str(shared_data / "nyu18" / "rgb" / "0001.png")), (tile_w, tile_h),
                          interpolation=cv2.INTER_AREA)  # column 0 of the test split is frame 0001
    np.testing.assert_array_equal(sheet[y : y + tile_h, x : x + tile_w], expected)
    seg_tile = sheet[y + 3 * (tile_h + GAP) : y + 3 * (tile_h + GAP) + tile_h, x : x + tile_w]
    assert np.abs(seg_tile.astype(int) - expected).mean() > 10  # labels drawn over the frame
