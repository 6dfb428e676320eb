"""Image folders (PNG/TIFF image + mask pairs, LGG layout): pairing, reading, subjects, errors."""
import numpy as np
import pytest

from jaxseg.data import formats, image_folder, records, split
from jaxseg.errors import JaxsegError
from tests.data.formats2d import tumor_slice, write_image_pair


def rgb_slice(shape=(40, 24), centre=(8, 16), seed=0):
    image, mask = tumor_slice(shape, centre, 4, seed)
    base = np.clip(image // 4, 0, 255).astype(np.uint8)
    return np.stack([base, base // 2, 255 - base], axis=-1), mask  # three different channels


def test_lgg_layout_pairs_tif_masks_and_groups_by_patient_folder(tmp_path):
    root = tmp_path / "kaggle_3m"
    written = {}
    for patient in ("TCGA_CS_4941_19960909", "TCGA_DU_5851_19950428"):
        for n in (1, 2, 10):
            image, mask = rgb_slice(seed=n)
            written[f"{patient}/{patient}_{n}"] = write_image_pair(root / patient, f"{patient}_{n}", image, mask, ".tif")
    (root / "data.csv").write_text("Patient,RNASeqCluster\n")  # the set's table of clinical data
    found = formats.get("image_folder").find_records(root)
    assert [r.case_id for r in found] == sorted(written)
    for r in found:
        assert (r.image, r.mask) == written[r.case_id]
        assert r.subject == r.case_id.split("/")[0]
    assert formats.detect(root) == "image_folder"


def test_rgb_tiff_and_grayscale_png_read_in_file_order(tmp_path):
    image, mask = rgb_slice()  # non-square, tumor off centre: rows and columns cannot be swapped
    tif, tif_mask = write_image_pair(tmp_path, "a", image, mask, ".tif")
    got, got_mask = image_folder.read_pair(tif, tif_mask, channels=3)
    np.testing.assert_array_equal(got, image.astype(np.float32))
    np.testing.assert_array_equal(got_mask, mask)
    png, png_mask = write_image_pair(tmp_path, "b", image[..., 0], mask, ".png", mask_max=1)
    got, got_mask = image_folder.read_pair(png, png_mask, channels=1)
    assert got.shape == (40, 24, 1) and got_mask[8, 16] == 1 and got_mask.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], image[..., 0])
    # grayscale saved as RGB (equal channels) serves a one-channel model
    grey, grey_mask = write_image_pair(tmp_path, "c", np.repeat(image[..., :1], 3, -1), mask, ".png")
    np.testing.assert_array_equal(image_folder.read_image(grey, channels=1)[..., 0], image[..., 0])


def test_pairing_problems_are_clear_errors(tmp_path):
    image, mask = rgb_slice()
    write_image_pair(tmp_path / "s1", "x", image, mask, ".png")
    write_image_pair(tmp_path / "s1", "y", image, mask, ".png")
    (tmp_path / "s1" / "y_mask.png").rename(tmp_path / "s1" / "y_seg.png")
    with pytest.raises(JaxsegError, match=r"y.png: has no mask y_mask.png \(2 image\(s\) without a mask; "
                                          r"check data.mask_suffix\)"):
        formats.get("image_folder").find_records(tmp_path)
    found = formats.get("image_folder").find_records(tmp_path, require_masks=False)  # enough to predict
    assert [(r.case_id, r.mask is None) for r in found] == [("s1/x", False), ("s1/y", True), ("s1/y_seg", True)]
    (tmp_path / "s1" / "y.png").unlink()
    (tmp_path / "s1" / "y_seg.png").rename(tmp_path / "s1" / "z_mask.png")
    with pytest.raises(JaxsegError, match="z_mask.png: a mask without its image"):
        formats.get("image_folder").find_records(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(JaxsegError, match="empty: no images found"):
        formats.get("image_folder").find_records(tmp_path / "empty")


@pytest.mark.parametrize("values, problem", [
    ((0, 128, 255), r"mask values \[0, 128, 255\] are not binary"),
    ((0, 1, 255), r"mask values \[0, 1, 255\] are not binary"),
])
def test_non_binary_masks_are_refused(tmp_path, values, problem):
    image, _ = rgb_slice()
    mask = np.zeros((40, 24), np.uint8)
    mask[: len(values)] = np.asarray(values, np.uint8)[:, None]
    img, m = write_image_pair(tmp_path, "a", image, mask, ".png")
    import imageio.v3 as iio
    iio.imwrite(m, mask)
    with pytest.raises(JaxsegError, match=f"^{m}: {problem}"):
        image_folder.read_mask(m)


def test_size_channel_and_corrupt_file_errors(tmp_path):
    image, mask = rgb_slice()
    img, m = write_image_pair(tmp_path, "a", image, mask[:, :20], ".png")
    with pytest.raises(JaxsegError, match=f"^{m}: mask is 40x20 but its image a.png is 40x24"):
        image_folder.read_pair(img, m, 3)
    with pytest.raises(JaxsegError, match=f"^{img}: has 3 channel\\(s\\) but data.modalities lists 1"):
        image_folder.read_image(img, 1)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(img.read_bytes()[:40])
    with pytest.raises(JaxsegError, match=f"^{broken}: cannot read this image"):
        image_folder.read_image(broken)
    colour = tmp_path / "colour_mask.png"
    import imageio.v3 as iio
    iio.imwrite(colour, np.stack([mask * 255, mask * 0, mask * 255], -1).astype(np.uint8))
    with pytest.raises(JaxsegError, match="is a colour mask"):
        image_folder.read_mask(colour)


def test_patient_folders_never_cross_splits(tmp_path):
    image, mask = rgb_slice()
    for p in range(6):
        for n in range(4):
            write_image_pair(tmp_path / f"patient{p}", f"p{p}_{n}", image, mask, ".png")
    found = formats.get("image_folder").find_records(tmp_path)
    subjects = records.subjects_of(found)
    splits = split.split_cases(list(subjects), (0.5, 0.25, 0.25), 3, subjects=subjects)
    owners = [{subjects[c] for c in splits[name]} for name in split.SPLITS]
    assert sum(len(o) for o in owners) == 6 and len(set().union(*owners)) == 6


def test_inspect_lists_patients_sizes_and_unpaired_images(tmp_path):
    from jaxseg.data.formats import inspect_folder
    image, mask = rgb_slice()
    write_image_pair(tmp_path / "p1", "a", image, mask, ".tif")
    write_image_pair(tmp_path / "p1", "b", image, 0 * mask, ".tif")
    lonely, _ = write_image_pair(tmp_path / "p2", "c", image, mask, ".png")
    (tmp_path / "p2" / "c_mask.png").unlink()
    table, problems = inspect_folder(tmp_path)
    caption = str(table.caption)
    assert problems and f"{lonely}: has no mask c_mask.png" in caption
    assert "3 slices of 2 patient(s)" in caption and "40x24 x3" in caption


def test_training_index_keeps_tumor_slices_and_a_share_of_empty_ones(tmp_path):
    from jaxseg import config as config_lib
    image, mask = rgb_slice((32, 32), (16, 16))
    for n in range(8):  # slices 0-3 with tumor (slice 0: a single pixel), 4-7 without
        m = mask if 0 < n < 4 else np.zeros_like(mask)
        if n == 0:
            m = np.zeros_like(mask)
            m[16, 16] = 1
        write_image_pair(tmp_path / "p", f"s{n}", image, m, ".png")
    found = formats.get("image_folder").find_records(tmp_path)

    def kept(*overrides):
        cfg = config_lib.load("lgg_folder", [*config_lib.SMOKE_OVERRIDES, "data.crop=none", *overrides])
        index = formats.get("image_folder").slice_index(found, ["t1", "flair", "t1ce"], cfg.data, 0, True, tmp_path / "cache")
        assert (index[:, 1] == 0).all()
        return [found[i].case_id[-2:] for i in index[:, 0]]

    assert kept("data.empty_slice_fraction=0", "data.min_tumor_pixels=0") == ["s0", "s1", "s2", "s3"]
    assert kept("data.empty_slice_fraction=0", "data.min_tumor_pixels=2") == ["s1", "s2", "s3"]
    half = kept("data.empty_slice_fraction=0.5", "data.min_tumor_pixels=2")
    assert half[:3] == ["s1", "s2", "s3"] and len(half) == 5 and set(half[3:]) <= {"s4", "s5", "s6", "s7"}
    validation = formats.get("image_folder").slice_index(found, ["t1", "flair", "t1ce"], config_lib.load("lgg_folder").data,
                                             0, False)
    assert validation[:, 0].tolist() == list(range(8))
