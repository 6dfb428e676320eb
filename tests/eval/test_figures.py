"""The evaluation figures are drawn from arrays: the same pictures as the report's drawing
functions give for those arrays, the gallery ranking every case's slices."""
import numpy as np
import pytest

from jaxseg.errors import JaxsegError
from jaxseg.eval.figures import EvaluationFigures
from jaxseg.report import figures as F
from jaxseg.report import slices as S


def case_arrays(seed, shape=(20, 18, 12)):
    rng = np.random.default_rng(seed)
    reference = np.zeros(shape, np.uint8)
    reference[4:14, 5:13, 3:9] = 2
    reference[6:10, 7:11, 4:8] = 1
    reference[7:9, 8:10, 5:7] = 3
    prediction = np.roll(reference, int(rng.integers(-2, 3)), axis=0)
    image = rng.random(shape).astype(np.float32)
    return prediction, reference, image


def test_panels_and_gallery_equal_the_drawing_of_the_same_arrays(tmp_path):
    spacing = (1.0, 1.0, 2.0)
    cases = {"A": case_arrays(0), "B": case_arrays(1)}
    drawing = EvaluationFigures(tmp_path / "eval", region="TC", n=3, min_pixels=4)
    for case, (prediction, reference, image) in cases.items():
        panel = drawing.add_case(case, prediction, reference, spacing, image if case == "A" else None,
                                 "flair" if case == "A" else None)
        assert panel == tmp_path / "eval" / "panels" / f"{case}.png"
    gallery = drawing.write_gallery()

    tiles = []
    for case, (prediction, reference, image) in cases.items():
        core = lambda classes: np.isin(classes, (1, 3))  # noqa: E731 -- TC
        tiles += S.case_tiles(case, image if case == "A" else None, core(prediction), core(reference), spacing,
                              3, "axial", 4, 5)
        expected = F.case_panel(case, image if case == "A" else None, prediction, reference, spacing,
                                tmp_path / "direct" / f"{case}.png", modality="flair" if case == "A" else None)
        assert (tmp_path / "eval" / "panels" / f"{case}.png").read_bytes() == expected.read_bytes()
    expected = F.slice_gallery(tiles, tmp_path / "direct" / "gallery.png", n=3, region="TC", min_pixels=4,
                               min_gap=5, cases=2, modality="flair, none")
    assert gallery.read_bytes() == expected.read_bytes()


def test_an_unknown_region_is_a_user_error(tmp_path):
    with pytest.raises(JaxsegError, match="figure region must be one of WT, TC, ET"):
        EvaluationFigures(tmp_path, region="NCR")
