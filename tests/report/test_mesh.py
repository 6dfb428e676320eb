"""Surface meshes: geometry in millimetres, closed surfaces, bounded size."""
from __future__ import annotations

import numpy as np
import pytest

from jaxseg.errors import JaxsegError
from jaxseg.report.mesh import MAX_FACES, report_meshes, surface_mesh

SPACING = (1.0, 1.5, 2.0)  # anisotropic, so a voxel-vs-mm mix-up shows


def ball(shape, spacing, center_mm, radius_mm) -> np.ndarray:
    coords = [np.arange(n) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*coords, indexing="ij")
    return (x - center_mm[0]) ** 2 + (y - center_mm[1]) ** 2 + (z - center_mm[2]) ** 2 <= radius_mm ** 2


def edge_use_counts(faces: np.ndarray) -> np.ndarray:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(edges, axis=0, return_counts=True)[1]


@pytest.mark.parametrize("step, smooth", [(1, 0.0), (1, 1.0), (2, 1.0)])
def test_sphere_vertices_lie_at_the_radius_in_mm(step: int, smooth: float) -> None:
    center, radius = np.array([20.0, 24.0, 30.0]), 12.0
    mask = ball((40, 32, 30), SPACING, center, radius)
    vertices, faces = surface_mesh(mask, SPACING, step=step, smooth=smooth)
    assert vertices.dtype == np.float32 and faces.dtype == np.int32
    assert vertices.shape[1] == 3 and faces.shape[1] == 3 and len(faces) > 100
    distance = np.linalg.norm(vertices - center, axis=1)
    assert abs(distance.mean() - radius) < 0.6  # the 0.5 iso-surface lies half a voxel out at most
    assert np.abs(distance - radius).max() < max(SPACING) * step  # within one (stepped) voxel
    assert faces.min() >= 0 and faces.max() < len(vertices)


def test_surface_touching_the_border_is_closed() -> None:
    mask = np.zeros((10, 12, 8), bool)
    mask[:6, 3:12, :] = True  # touches three faces of the volume
    vertices, faces = surface_mesh(mask, SPACING, step=1, smooth=0.0)
    assert np.all(edge_use_counts(faces) == 2)  # every edge between two triangles: watertight
    assert vertices.min(axis=0)[0] < 0  # the surface closes half a voxel outside the volume
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    np.testing.assert_allclose(hi - lo, np.array([6, 9, 8]) * SPACING, atol=1e-4)  # box size in mm


def test_empty_mask_gives_an_empty_mesh() -> None:
    vertices, faces = surface_mesh(np.zeros((8, 8, 8), bool), SPACING)
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)
    assert vertices.dtype == np.float32 and faces.dtype == np.int32


def test_single_voxel_survives_smoothing() -> None:
    mask = np.zeros((9, 9, 9), bool)
    mask[4, 4, 4] = True
    vertices, faces = surface_mesh(mask, SPACING)
    assert len(faces) > 0
    np.testing.assert_allclose(vertices.mean(axis=0), np.array([4, 4, 4]) * SPACING, atol=0.5)


def test_face_count_is_bounded() -> None:
    # a brain-sized ellipsoid at 1 mm: the default step and limit keep it under MAX_FACES
    x, y, z = np.meshgrid(*(np.arange(n) for n in (170, 200, 150)), indexing="ij")
    brain = ((x - 85) / 70) ** 2 + ((y - 100) / 85) ** 2 + ((z - 75) / 65) ** 2 <= 1
    _, faces = surface_mesh(brain, (1.0, 1.0, 1.0))
    assert 1_000 < len(faces) <= MAX_FACES
    _, few = surface_mesh(brain, (1.0, 1.0, 1.0), max_faces=3_000)
    assert 0 < len(few) <= 3_000
    _, many = surface_mesh(brain, (1.0, 1.0, 1.0), step=1, max_faces=None)
    assert len(many) > MAX_FACES  # the limit did something


def test_bad_arguments_raise_one_line_errors() -> None:
    with pytest.raises(JaxsegError, match="must be 3-D"):
        surface_mesh(np.ones((4, 4), bool), SPACING)
    with pytest.raises(JaxsegError, match="spacing must be 3 positive numbers"):
        surface_mesh(np.ones((4, 4, 4), bool), (1.0, -1.0, 1.0))
    with pytest.raises(JaxsegError, match="step must be >= 1"):
        surface_mesh(np.ones((4, 4, 4), bool), SPACING, step=0)


def test_report_meshes_has_the_brain_and_present_classes() -> None:
    shape = (30, 30, 20)
    image = ball(shape, SPACING, (15, 22, 20), 12)[..., None] * np.ones(2, np.float32)
    seg = np.zeros(shape, np.uint8)
    seg[12:18, 12:18, 8:12] = 2
    seg[14:16, 14:16, 9:11] = 3
    meshes = report_meshes(image, seg, SPACING)
    assert list(meshes) == ["Brain", "ED", "ET"]  # no NCR voxel, no NCR surface
    brain_vertices = meshes["Brain"][0]
    assert np.abs(np.linalg.norm(brain_vertices - np.array([15, 22, 20]), axis=1) - 12).max() < 2 * max(SPACING)


def test_report_meshes_leave_out_empty_surfaces():
    from jaxseg.report.mesh import report_meshes
    image = np.zeros((12, 12, 12, 1), np.float32)
    segmentation = np.zeros((12, 12, 12), np.uint8)
    assert report_meshes(image, segmentation, (1.0, 1.0, 1.0)) == {}
    image[3:9, 3:9, 3:9] = 1
    segmentation[5:7, 5:7, 5:7] = 2
    assert list(report_meshes(image, segmentation, (1.0, 1.0, 1.0))) == ["Brain", "ED"]
