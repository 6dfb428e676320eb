"""Writers of small files in the 2D formats, laid out as the real datasets are."""
from __future__ import annotations

from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np


def write_figshare_mat(path: Path, image: np.ndarray, mask: np.ndarray, label: int = 2,
                       pid: str = "100360") -> Path:
    """A MATLAB v7.3 file as the figshare set has them: a 512-byte MATLAB header (HDF5 user block)
    and a ``cjdata`` group whose matrices are stored column-major, i.e. transposed for h5py."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("cjdata")
        g["image"] = np.asarray(image, np.int16).T
        g["tumorMask"] = np.asarray(mask, np.uint8).T
        g["label"] = np.array([[float(label)]])
        g["PID"] = np.array([[ord(c)] for c in pid], np.uint16)  # MATLAB char (1, N), transposed
        g["tumorBorder"] = np.zeros((1, 4))
    with open(path, "r+b") as f:  # MATLAB's text header in the user block
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    return path


def tumor_slice(shape: tuple[int, int], centre: tuple[int, int], radius: int, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """A head-like image (an ellipse of noise, bright disc = tumor) and its 0/1 tumor mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    head = ((rows - shape[0] / 2) / (shape[0] * 0.45)) ** 2 + ((cols - shape[1] / 2) / (shape[1] * 0.45)) ** 2 < 1
    tumor = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius ** 2
    image = np.where(head, 300 + rng.normal(0, 20, shape), 0) + 500 * tumor
    return image.astype(np.int16), (tumor & head).astype(np.uint8)


def write_image_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray, ext: str = ".png",
                     mask_suffix: str = "_mask", mask_max: int = 255) -> tuple[Path, Path]:
    """``<stem><ext>`` and ``<stem><mask_suffix><ext>`` (mask values 0 and ``mask_max``)."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path, mask_path = folder / f"{stem}{ext}", folder / f"{stem}{mask_suffix}{ext}"
    iio.imwrite(image_path, np.asarray(image))
    iio.imwrite(mask_path, (np.asarray(mask) > 0).astype(np.uint8) * np.uint8(mask_max))
    return image_path, mask_path
