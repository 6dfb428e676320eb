"""Figures: orientation, aspect, overlay colours, per-slice Dice, slice picking, and the PNGs."""
import numpy as np
import pytest
from PIL import Image

from jaxseg.report import figures as F
from jaxseg.report import slices as S

# Where each patient direction lies in a RAS volume: (axis, high end?).
DIRECTIONS = {"R": (0, True), "L": (0, False), "A": (1, True), "P": (1, False), "S": (2, True), "I": (2, False)}


def read_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("plane", S.PLANES)
def test_the_edge_letters_say_where_the_voxels_are(plane):
    """A voxel at the patient's <left letter> and <top letter> end lands in the top-left corner."""
    shape = (6, 7, 8)
    left, right, top, bottom = S.EDGE_LABELS[plane]
    for (col_letter, row_letter), (row, col) in {(left, top): (0, 0), (right, bottom): (-1, -1),
                                                 (left, bottom): (-1, 0)}.items():
        index = [s // 2 for s in shape]
        for letter in (col_letter, row_letter):
            axis, high = DIRECTIONS[letter]
            index[axis] = shape[axis] - 1 if high else 0
        volume = np.zeros(shape)
        volume[tuple(index)] = 1
        shown = S.display_slice(volume, plane, index[S.PLANE_AXIS[plane]])
        assert shown.sum() == 1 and shown[row, col] == 1, (plane, col_letter, row_letter)
    # Radiological: the patient's right on the viewer's left (sagittal: anterior on the left).
    assert left == ("A" if plane == "sagittal" else "R")


def test_aspect_keeps_millimetres_square():
    spacing = (1.0, 2.0, 3.0)  # X, Y, Z in mm
    assert S.display_aspect("axial", spacing) == 2.0  # rows are Y, columns X
    assert S.display_aspect("coronal", spacing) == 3.0  # rows Z, columns X
    assert S.display_aspect("sagittal", spacing) == 1.5  # rows Z, columns Y


def test_overlay_colours():
    gray = np.full((1, 4), 0.5, np.float32)
    prediction = np.array([[True, False, True, False]])
    reference = np.array([[False, True, True, False]])
    rgb = S.agreement_rgb(gray, prediction, reference)
    red, green, yellow, plain = rgb[0]
    assert red[0] > red[1] == red[2]
    assert green[1] > green[0] == green[2]
    assert yellow[0] == yellow[1] > yellow[2]
    np.testing.assert_array_equal(plain, [0.5, 0.5, 0.5])
    opaque = S.agreement_rgb(gray, prediction, reference, alpha=1.0)[0]
    np.testing.assert_array_equal(opaque[:3], [[1, 0, 0], [0, 1, 0], [1, 1, 0]])


def test_slice_dice():
    prediction = np.zeros((4, 4, 4), bool)
    reference = np.zeros((4, 4, 4), bool)
    prediction[:2, :2, 1] = reference[:2, :2, 1] = True  # identical: 1
    prediction[:2, :2, 2] = True
    reference[1:3, :2, 2] = True  # 2 of 4 + 4 voxels shared: 2 * 2 / 8
    prediction[:, :, 3] = True  # nothing to find: 0
    dice, union = S.slice_dice(prediction, reference, axis=2)
    assert dice[0] == 1.0 and union[0] == 0  # both empty: the one Dice convention
    np.testing.assert_allclose(dice[1:], [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(union, [0, 4, 6, 16])


def known_cases(rng, cases=3, slices_with_tumor=4):
    """Cases whose tumor slices have a known Dice: the reference is a 10 x 10 square, the
    prediction its first m voxels (raster order), so Dice = 2 m / (100 + m), all m distinct."""
    ms = rng.choice(101, size=cases * slices_with_tumor, replace=False)
    out, expected = [], {}
    for c in range(cases):
        prediction = np.zeros((16, 16, 40), bool)
        reference = np.zeros_like(prediction)
        for j, z in enumerate(rng.choice(np.arange(2, 38), slices_with_tumor, replace=False)):
            m = int(ms[c * slices_with_tumor + j])
            reference[3:13, 3:13, z] = True
            prediction[3:13, 3:13, z] = (np.arange(100) < m).reshape(10, 10)
            expected[(f"case{c}", int(z))] = 2 * m / (100 + m)
        out.append((f"case{c}", prediction, reference))
    return out, expected


def test_the_gallery_picks_the_truly_best_and_worst_slices():
    cases, expected = known_cases(np.random.default_rng(0))
    n = 3
    tiles = [t for case, p, r in cases for t in S.case_tiles(case, None, p, r, (1, 1, 1), n, min_gap=1)]
    best, worst = S.best_and_worst(tiles, n, min_gap=1)
    ranked = sorted(expected, key=expected.get)
    assert [(t.case, t.index) for t in best] == ranked[::-1][:n]
    assert [(t.case, t.index) for t in worst] == ranked[:n]
    for t in best + worst:
        assert t.dice == pytest.approx(expected[(t.case, t.index)])
        assert t.plane == "axial" and t.gray.shape == t.prediction.shape == t.reference.shape


def test_gallery_rules_gap_size_and_few_slices():
    prediction = np.zeros((16, 16, 40), bool)
    reference = np.zeros_like(prediction)
    reference[2:12, 2:12, 10:13] = prediction[2:12, 2:12, 10:13] = True  # three alike neighbours, Dice 1
    reference[2:12, 2:12, 20] = True
    prediction[2:12, 2:7, 20] = True  # Dice 2/3
    prediction[2:12, 2:12, 26] = True  # Dice 0
    reference[0:3, 0:3, 33] = prediction[0:3, 0:3, 33] = True  # Dice 1 but 9 voxels: too small
    tiles = S.case_tiles("c", None, prediction, reference, (1, 1, 1), n=4)
    best, worst = S.best_and_worst(tiles, 2)
    assert [t.index for t in best] == [10, 20]  # 11, 12 are within 5 slices of 10; 33 is tiny
    assert [t.index for t in worst] == [26]  # a slice is best or worst, not both
    tiles = S.case_tiles("c", None, prediction, reference, (1, 1, 1), n=4, min_gap=1)
    best, worst = S.best_and_worst(tiles, 2, min_gap=1)
    assert [t.index for t in best] == [10, 11] and [t.index for t in worst] == [26, 20]
    only_small = S.case_tiles("c", None, prediction & (np.arange(40) == 33), reference & (np.arange(40) == 33),
                              (1, 1, 1), n=2)
    assert [t.index for t in S.best_and_worst(only_small, 2)[0]] == [33]  # better than nothing


def test_slices_for_panels_cut_through_the_tumor():
    tumor = np.zeros((30, 32, 40), bool)
    x, y, z = np.ogrid[:30, :32, :40]
    tumor[((x - 20) / 5) ** 2 + ((y - 10) / 4) ** 2 + ((z - 25) / 7) ** 2 <= 1] = True
    for axis in range(3):
        picked = S.pick_slices(tumor, axis, 5)
        assert len(picked) == 5 and picked == sorted(set(picked))
        others = tuple(a for a in range(3) if a != axis)
        assert all(tumor.any(axis=others)[i] for i in picked)
        extent = np.flatnonzero(tumor.any(axis=others))
        assert picked[0] > extent[0] and picked[-1] < extent[-1]  # spread, not at the thin ends
    thin = np.zeros((10, 10, 20), bool)
    thin[4:6, 4:6, 8:10] = True  # two slices of tumor: both shown, neighbours fill up
    picked = S.pick_slices(thin, 2, 5)
    assert {8, 9} <= set(picked) and len(picked) == 5 and max(picked) - min(picked) == 4
    brain = np.zeros((10, 10, 40))
    brain[:, :, 5:35] = 1
    picked = S.pick_slices(np.zeros((10, 10, 40), bool), 2, 5, brain=brain)
    assert len(picked) == 5 and 5 < picked[0] and picked[-1] < 34


def test_training_curves_with_one_record_and_no_validation(tmp_path):
    record = {"epoch": 1, "step": 3, "train_loss": 1.2, "lr_scale": 1.0, "train_dice_WT": 0.3}
    path = F.training_curves([record], tmp_path / "curves.png", step_losses=[(1, 1.4), (2, 1.2), (3, 1.0)])
    pixels = read_png(path)
    assert pixels.shape == (F.CURVE_PANEL_PX[1], 2 * F.CURVE_PANEL_PX[0] + F.CURVE_LEGEND_PX, 3)
    F.training_curves([], tmp_path / "empty.png")  # before the first epoch: still a figure
    assert read_png(tmp_path / "empty.png").shape == pixels.shape


def test_training_curves_with_validation_and_a_changed_learning_rate(tmp_path):
    records = [{"epoch": e, "step": 5 * e, "train_loss": 1 / e, "lr_scale": 1.0 if e < 3 else 0.5,
                **({"val_loss": 1.1 / e, "val_dice": 0.2 * e, "val_dice_WT": 0.2 * e, "val_dice_ET": 0.1 * e}
                   if e % 2 == 0 else {})} for e in range(1, 5)]
    pixels = read_png(F.training_curves(records, tmp_path / "curves.png"))
    assert pixels.shape == (F.CURVE_PANEL_PX[1], 3 * F.CURVE_PANEL_PX[0] + F.CURVE_LEGEND_PX, 3)


def colour_count(pixels, rgb, tolerance=3):
    return int(np.all(np.abs(pixels.astype(int) - np.asarray(rgb)) <= tolerance, axis=-1).sum())


def test_gallery_png_shows_the_agreement_colours(tmp_path):
    prediction = np.zeros((40, 40, 12), bool)
    reference = np.zeros_like(prediction)
    prediction[5:20, 5:35, 3:9] = True
    reference[20:35, 5:35, 3:9] = True
    prediction[18:22, 5:35, 3:9] = reference[18:22, 5:35, 3:9] = True  # a band of overlap
    tiles = S.case_tiles("x", np.zeros(prediction.shape), prediction, reference, (1, 1, 1), n=2)
    path = F.slice_gallery(tiles, tmp_path / "gallery.png", n=2, tile_px=150)
    pixels = read_png(path)
    best, worst = S.best_and_worst(tiles, 2)
    assert pixels.shape[:2][::-1] == F.gallery_size_px(max(len(best), len(worst)), 150)
    level = round(255 * S.OVERLAY_ALPHA)  # colour blended over black
    for rgb in ((level, 0, 0), (0, level, 0), (level, level, 0)):
        assert colour_count(pixels, rgb) > 200, rgb


def test_case_panel(tmp_path):
    reference = np.zeros((30, 30, 20), np.uint8)
    reference[8:20, 8:20, 5:15] = 2
    reference[11:17, 11:17, 8:12] = 3
    prediction = np.roll(reference, 2, axis=0)
    image = np.random.default_rng(0).random(reference.shape).astype(np.float32)
    path = F.case_panel("case", image, prediction, reference, (1.0, 1.0, 2.0), tmp_path / "p" / "case.png",
                        tile_px=100)
    pixels = read_png(path)
    assert pixels.shape[1] == F.panel_size_px(5, 100)[0]
    assert pixels.shape[0] > 6 * 30  # six rows of tiles
    colours = F.class_colours()
    assert colours[2] == pytest.approx((0x2e / 255, 0xcc / 255, 0x40 / 255))  # the report's ED green
    F.case_panel("empty", None, np.zeros_like(reference), np.zeros_like(reference), (1, 1, 1),
                 tmp_path / "empty.png", tile_px=60)
    assert read_png(tmp_path / "empty.png").shape[1] == F.panel_size_px(5, 60)[0]


def test_smoothing_is_debiased():
    np.testing.assert_allclose(F.smooth([2.0, 2.0, 2.0], 0.9), [2.0, 2.0, 2.0])
    # s1 = 0.5 * 0 + 0.5 * 0 = 0; s2 = 0.5 * 0 + 0.5 * 10 = 5, debiased by 1 - 0.5^2.
    assert F.smooth([0.0, 10.0], 0.5)[1] == pytest.approx(5.0 / 0.75)
