"""Captions: the patient's side from the affine whatever the storage order, sizes from spacing, words.

Expected sides are computed here independently of jaxseg: from the stored file arrays and their own
affines with nibabel's ``apply_affine``, or from hand-made volumes whose geometry is known.
"""

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine
from scipy import ndimage

from jaxseg.data.brats import case_from_path, load_case
from jaxseg.data.phantom import write_phantoms
from jaxseg.target import target_kind
from jaxseg.explain.captions import (_saliency_stats, describe_slices, describe_volume,
                                     spacing_from_affine)

SHAPE = (41, 49, 37)  # odd: the brain's centre is a voxel centre
CENTRE = tuple(n // 2 for n in SHAPE)  # (20, 24, 18)
AFFINE_2MM = np.array([[2.0, 0, 0, -40], [0, 2, 0, -48], [0, 0, 2, -36], [0, 0, 0, 1]])  # RAS, 2 mm voxels


def _brain() -> np.ndarray:
    """An ellipsoid centred in the array (extent 37 x 45 x 33 voxels)."""
    grid = np.indices(SHAPE).astype(float)
    radii = np.array([18.5, 22.5, 16.5])
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, CENTRE, radii)) <= 1


def _block(centre, size=(6, 5, 5), label=2) -> np.ndarray:
    """``(X, Y, Z)`` uint8 classes with one box of ``label`` of ``size`` voxels starting near ``centre``."""
    classes = np.zeros(SHAPE, np.uint8)
    lo = [c - s // 2 for c, s in zip(centre, size)]
    classes[tuple(slice(a, a + s) for a, s in zip(lo, size))] = label
    return classes


# --------------------------------------------------------------------------------------------
# The patient's side from files stored LPS and RAS

def _world_offset_from_file(folder) -> np.ndarray:
    """Tumor centroid minus brain centroid in world mm, from the STORED arrays and the file's affine."""
    name = folder.name
    seg, flair = nib.load(folder / f"{name}_seg.nii.gz"), nib.load(folder / f"{name}_flair.nii.gz")
    tumor = apply_affine(seg.affine, np.argwhere(np.asarray(seg.dataobj) > 0).mean(axis=0))
    brain = apply_affine(flair.affine, np.argwhere(np.asarray(flair.dataobj) > 0).mean(axis=0))
    return tumor - brain


def test_side_is_the_patients_for_files_stored_lps_and_ras(tmp_path):
    # Seed 7 at this shape puts case 0 on the patient's right and case 1 on the left.
    kwargs = dict(cases=2, seed=7, shape=(64, 64, 40))
    lps = write_phantoms(tmp_path / "lps", orientation="LPS", **kwargs)
    ras = write_phantoms(tmp_path / "ras", orientation="RAS", **kwargs)
    sides = []
    for lps_folder, ras_folder in zip(lps, ras):
        stored = [np.asarray(nib.load(f / f"{f.name}_seg.nii.gz").dataobj) for f in (lps_folder, ras_folder)]
        assert not np.array_equal(*stored), "the two files must store differently ordered arrays"
        captions = []
        for folder in (lps_folder, ras_folder):
            image, classes, props = load_case(case_from_path(folder), ["flair"])
            captions.append(describe_volume(classes, props.canonical_affine, image[..., 0] > 0))
            assert props.orientation == (("L", "P", "S") if folder in lps else ("R", "A", "S"))
        assert captions[0].side == captions[1].side
        assert captions[0].text == captions[1].text
        for folder in (lps_folder, ras_folder):
            dx = _world_offset_from_file(folder)[0]
            assert abs(dx) > 5, "phantom should be clearly lateral for this test to mean anything"
            assert captions[0].side == ("right" if dx > 0 else "left")
        assert f"patient's {captions[0].side} hemisphere" in captions[0].text
        sides.append(captions[0].side)
    assert sides == ["right", "left"]


def test_real_brats_case_is_described_on_the_side_its_file_says(real_data):
    folder = real_data / "brats2018" / "Brats18_2013_11_1"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    image, classes, props = load_case(case_from_path(folder), ["flair"])
    caption = describe_volume(classes, props.canonical_affine, image[..., 0] > 0)
    dx = _world_offset_from_file(folder)[0]  # the stored array is LPS: index 0 runs to the Left
    assert props.orientation == ("L", "P", "S") and abs(dx) > 10
    assert caption.side == ("right" if dx > 0 else "left")


# --------------------------------------------------------------------------------------------
# Location words on hand-made volumes

@pytest.mark.parametrize("axis, words", [(0, ("left", "right", "midline")),
                                         (1, ("posterior", "anterior", "central")),
                                         (2, ("inferior", "superior", "central"))])
def test_location_words_along_each_axis(axis, words):
    brain = _brain()
    fields = ("side", "anteroposterior", "superoinferior")
    low, high, middle = list(CENTRE), list(CENTRE), list(CENTRE)
    low[axis], high[axis] = CENTRE[axis] - 12, CENTRE[axis] + 12
    results = [getattr(describe_volume(_block(c, (5, 5, 5)), AFFINE_2MM, brain), fields[axis])
               for c in (low, high, middle)]
    assert tuple(results) == words
    mirrored = np.flip(_block(low, (5, 5, 5)), axis=axis)  # the brain is symmetric, so only the tumor moves
    assert getattr(describe_volume(mirrored, AFFINE_2MM, brain), fields[axis]) == words[1]


def test_side_follows_the_affine_not_the_array_index():
    brain, classes = _brain(), _block((CENTRE[0] - 12, *CENTRE[1:]), (5, 5, 5))
    flipped_x = AFFINE_2MM.copy()
    flipped_x[0, 0] = -2.0  # the same array, but index 0 now runs toward the patient's Left
    assert describe_volume(classes, AFFINE_2MM, brain).side == "left"
    assert describe_volume(classes, flipped_x, brain).side == "right"


def test_crossing_the_midline():
    brain = _brain()
    mostly_left = _block((CENTRE[0] - 5, *CENTRE[1:]), (20, 5, 5))  # x 10..29 around midline 20
    caption = describe_volume(mostly_left, AFFINE_2MM, brain)
    assert caption.side == "left" and caption.crosses_midline and "crossing the midline" in caption.text
    one_side = describe_volume(_block((CENTRE[0] - 12, *CENTRE[1:]), (5, 5, 5)), AFFINE_2MM, brain)
    assert not one_side.crosses_midline and "midline" not in one_side.text


# --------------------------------------------------------------------------------------------
# Sizes and sub-regions

def test_spacing_from_affine_is_the_column_norms():
    lps_like = np.array([[0, -0.9, 0, 5], [-1.2, 0, 0, 7], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(spacing_from_affine(lps_like), [1.2, 0.9, 3.0])


@pytest.mark.parametrize("size, ml, word", [((6, 5, 5), 1.2, "small"), ((12, 12, 12), 13.824, "moderate"),
                                            ((20, 20, 20), 64.0, "large")])
def test_volume_in_ml_from_2mm_spacing(size, ml, word):
    caption = describe_volume(_block(CENTRE, size), AFFINE_2MM, _brain())
    assert caption.volumes_ml["WT"] == pytest.approx(ml)  # voxels x 8 mm³
    assert caption.size == word and caption.text.startswith(f"{word.capitalize()} tumor ({ml:.1f} mL)")


def test_slice_area_in_mm2_from_2mm_spacing():
    for size, text in [((5, 4, 5), "Small tumor area 80 mm²"), ((6, 5, 5), "Moderate tumor area 120 mm²"),
                       ((20, 20, 5), "Large tumor area 1600 mm²")]:  # pixels x 4 mm²
        assert text in describe_slices(_block(CENTRE, size), AFFINE_2MM, _brain())[CENTRE[2]]


def test_sub_regions_and_their_volumes():
    classes = _block(CENTRE, (12, 12, 12), label=2)  # edema halo
    classes[_block(CENTRE, (8, 8, 8)) > 0] = 3  # enhancing rim
    classes[_block(CENTRE, (4, 4, 4)) > 0] = 1  # necrotic centre
    caption = describe_volume(classes, AFFINE_2MM, _brain())
    voxel_ml = 8 / 1000
    expected = {"NCR": 64 * voxel_ml, "ET": (512 - 64) * voxel_ml, "ED": (1728 - 512) * voxel_ml,
                "TC": 512 * voxel_ml, "WT": 1728 * voxel_ml}
    assert caption.volumes_ml == pytest.approx(expected)
    assert "edema 9.7 mL, enhancing tumor 3.6 mL, necrotic core 0.5 mL (tumor core 4.1 mL)" in caption.text

    edema_only = describe_volume(_block(CENTRE, (6, 6, 6), label=2), AFFINE_2MM, _brain())
    assert "Sub-regions: edema 1.7 mL; no necrotic core or enhancing tumor" in edema_only.text


def test_whole_tumor_model_lists_no_sub_regions():
    regions = target_kind("wt").region_names
    wt_map = _block(CENTRE, (6, 5, 5), label=1)  # a WT model's 1 means tumor, not NCR
    caption = describe_volume(wt_map, AFFINE_2MM, _brain(), regions=regions)
    assert set(caption.volumes_ml) == {"WT"} and "necrotic" not in caption.text
    slices = describe_slices(wt_map, AFFINE_2MM, _brain(), regions=regions)
    assert "Sub-regions" not in slices[CENTRE[2]]


# --------------------------------------------------------------------------------------------
# Saliency and uncertainty

def test_saliency_concentrated_inside_versus_diffuse():
    brain, classes = _brain(), _block(CENTRE, (6, 6, 6))
    on_tumor = (classes > 0).astype(np.float32)
    note = describe_volume(classes, AFFINE_2MM, brain, saliency=on_tumor).saliency_note
    assert note.startswith("Saliency is concentrated") and "mostly inside the predicted tumor (100%" in note
    everywhere = brain.astype(np.float32)
    note = describe_volume(classes, AFFINE_2MM, brain, saliency=everywhere).saliency_note
    assert note.startswith("Saliency is diffuse (half its mass in 50% of the brain volume)")
    assert "mostly outside the predicted tumor" in note
    slice_note = describe_slices(classes, AFFINE_2MM, brain, saliency=everywhere)[CENTRE[2]]
    assert "Saliency is diffuse" in slice_note and "of the brain area" in slice_note


def test_half_mass_count_matches_an_exact_sort():
    rng = np.random.default_rng(0)
    saliency = ndimage.gaussian_filter(rng.random(SHAPE), 3) ** 4  # smooth, skewed, no ties
    saliency /= saliency.max()
    exact_sorted = np.sort(saliency.ravel())[::-1]
    exact = np.searchsorted(np.cumsum(exact_sorted), 0.5 * saliency.sum()) + 1
    inside, half = _saliency_stats(saliency, np.zeros(SHAPE, bool), per_slice=False)
    assert half[0] == pytest.approx(exact, rel=0.02) and inside[0] == 0
    z = CENTRE[2]
    per_slice = _saliency_stats(saliency, np.zeros(SHAPE, bool), per_slice=True)[1][z]
    plane = np.sort(saliency[:, :, z].ravel())[::-1]
    assert per_slice == pytest.approx(np.searchsorted(np.cumsum(plane), 0.5 * plane.sum()) + 1, rel=0.02)


def test_uncertainty_at_border_inside_low_and_elsewhere():
    brain, classes = _brain(), _block(CENTRE, (14, 14, 14))
    tumor = classes > 0
    border = (ndimage.binary_dilation(tumor) & ~ndimage.binary_erosion(tumor)).astype(np.float32)
    note = describe_volume(classes, AFFINE_2MM, brain, uncertainty=border).uncertainty_note
    assert note.startswith("Uncertain mainly at the tumor border") and "100% within 2 voxels" in note
    core = ndimage.binary_erosion(tumor, iterations=4).astype(np.float32)
    note = describe_volume(classes, AFFINE_2MM, brain, uncertainty=core).uncertainty_note
    assert note.startswith("Uncertain inside the tumor")
    faint = 0.1 * tumor  # below the 0.3-nat threshold everywhere
    assert describe_volume(classes, AFFINE_2MM, brain, uncertainty=faint).uncertainty_note == "Low uncertainty."
    far = _block((CENTRE[0] + 12, *CENTRE[1:]), (7, 7, 7)).astype(np.float32)  # 343 voxels, 12% of the tumor
    note = describe_volume(classes, AFFINE_2MM, brain, uncertainty=far).uncertainty_note
    assert note.startswith("Uncertain away from the predicted tumor")
    slice_note = describe_slices(classes, AFFINE_2MM, brain, uncertainty=border)[CENTRE[2]]
    assert "Uncertain mainly at the tumor border" in slice_note


# --------------------------------------------------------------------------------------------
# Empty predictions and per-slice captions

def test_empty_prediction():
    empty, brain = np.zeros(SHAPE, np.uint8), _brain()
    saliency, uncertainty = brain.astype(np.float32), np.zeros(SHAPE, np.float32)
    caption = describe_volume(empty, AFFINE_2MM, brain, saliency, uncertainty)
    assert caption.text == "No tumor predicted in this volume. Low uncertainty."
    assert caption.side is None and caption.size is None and caption.volumes_ml["WT"] == 0
    slices = describe_slices(empty, AFFINE_2MM, brain, saliency, uncertainty)
    assert len(slices) == SHAPE[2] and all("No tumor predicted in this slice." in s for s in slices)


def test_per_slice_captions():
    brain = _brain()
    classes = _block((CENTRE[0] - 12, CENTRE[1], CENTRE[2] + 8), (5, 4, 5))  # left, above the centre
    saliency = (classes > 0).astype(np.float32)
    captions = describe_slices(classes, AFFINE_2MM, brain, saliency=saliency)
    assert len(captions) == SHAPE[2]
    tumor_slices = [z for z, text in enumerate(captions) if "No tumor" not in text]
    assert tumor_slices == list(range(CENTRE[2] + 6, CENTRE[2] + 11))
    for z in tumor_slices:
        assert captions[z].startswith(f"Slice {z} (superior level): Small tumor area 80 mm² "
                                      "in the patient's left hemisphere.")
        assert "Saliency is concentrated" in captions[z]
    assert captions[0].startswith("Slice 0 (inferior level): No tumor predicted in this slice.")
    assert captions[CENTRE[2]].startswith(f"Slice {CENTRE[2]} (level of the brain centre)")


def test_per_slice_captions_at_brats_size():
    shape = (240, 240, 155)
    grid = np.indices(shape, dtype=np.float32)
    brain = ((grid[0] - 120) / 70) ** 2 + ((grid[1] - 120) / 85) ** 2 + ((grid[2] - 77) / 65) ** 2 <= 1
    classes = np.zeros(shape, np.uint8)
    classes[70:110, 100:140, 60:100] = 2
    classes[80:100, 110:130, 70:90] = 3
    rng = np.random.default_rng(0)
    saliency, uncertainty = rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32) * 0.4
    captions = describe_slices(classes, np.eye(4), brain, saliency, uncertainty)
    assert len(captions) == 155 and "Large tumor area 1600 mm²" in captions[80]
