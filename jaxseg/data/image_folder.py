"""Folders of 2D image/mask files (PNG, TIFF), as the LGG segmentation set of Buda et al. (Kaggle).

Layout: one folder per subject, one image per slice and its mask beside it, named
``<stem><mask_suffix>.<ext>``::

    kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif
    kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1_mask.tif

- The **subject** of a slice is its folder (relative to the dataset root), so a split never puts
  two slices of one subject on both sides. Images directly in the root are each their own subject.
- **Images** are grayscale ``(H, W)`` or multi-channel ``(H, W, C)`` (the LGG images are RGB
  files holding pre-contrast T1, FLAIR and post-contrast T1 as R, G, B). An alpha channel is
  dropped. Any integer or float dtype; returned as float32 ``(H, W, C)``.
- **Masks** are binary: values {0, 255} or {0, 1} (either, not a mix), one channel (an RGB mask
  whose channels are equal counts as one channel). Returned as uint8 0/1 ``(H, W)``.

Arrays keep the file's (row, column) order; a prediction written back is the same size and order.
Readers: imageio (PNG through Pillow, TIFF through tifffile), both installed with scikit-image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxseg.data.brats import label_values
from jaxseg.errors import JaxsegError, file_error

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _read(path: Path) -> np.ndarray:
    import imageio.v3 as iio  # noqa: PLC0415 (only this format needs it)
    if not path.is_file():
        raise file_error(path, "no such file")
    try:
        array = np.asarray(iio.imread(path))
    except Exception as err:  # noqa: BLE001 (Pillow and tifffile raise many types for bad files)
        raise file_error(path, f"cannot read this image ({type(err).__name__}: {err})") from None
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] > 4:
        raise file_error(path, f"holds {array.shape[0]} pages or planes of {array.shape[1]}x{array.shape[2]}; "
                               "expected one 2D image (channels last)")
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]  # gray+alpha, RGBA: drop the alpha channel
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3) or min(array.shape[:2]) < 2:
        raise file_error(path, f"has shape {array.shape}; expected a 2D image, grayscale or RGB")
    if array.dtype.kind not in "uifb":
        raise file_error(path, f"has pixel type {array.dtype}; expected numbers")
    return array


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """An image as float32 ``(H, W, C)``.

    ``channels``: the count the model expects (``len(data.modalities)``); an RGB image whose three
    channels are equal (grayscale saved as RGB) gives one channel when one is asked for. Raises
    JaxsegError naming the file for an unreadable file, a multi-page stack, NaN/Inf pixels or a
    channel count other than ``channels``.
    """
    path = Path(path)
    array = _read(path)
    if channels is not None and array.shape[-1] != channels:
        if channels == 1 and array.shape[-1] == 3 and _channels_equal(array):
            array = array[..., :1]
        else:
            raise file_error(path, f"has {array.shape[-1]} channel(s) but data.modalities lists {channels}; "
                                   "list one modality per channel, in the file's channel order")
    image = array.astype(np.float32)
    if not np.isfinite(image).all():
        raise file_error(path, f"has {int(np.count_nonzero(~np.isfinite(image)))} NaN or Inf pixels")
    return np.ascontiguousarray(image)


def _channels_equal(array: np.ndarray) -> bool:
    return bool(np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]))


def read_mask(path: str | Path) -> np.ndarray:
    """A binary mask as uint8 0/1 ``(H, W)``; JaxsegError naming the file for values other than
    {0, 255} or {0, 1}, or colour channels that differ."""
    path = Path(path)
    array = _read(path)
    if array.shape[-1] == 3:
        if not _channels_equal(array):
            raise file_error(path, "is a colour mask (its channels differ); expected a binary mask, one channel")
    mask = array[..., 0]
    # label_values (bincount) is fast for integers; a float mask must not round 0.5 to 0
    values = set(label_values(mask)) if mask.dtype.kind in "ub" else set(np.unique(mask).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        shown = sorted(values)[:8]
        raise file_error(path, f"mask values {shown}{' ...' if len(values) > 8 else ''} are not binary "
                               "(expected 0/255 or 0/1)")
    return (mask > 0).astype(np.uint8)


def mask_stem(path: Path, mask_suffix: str) -> str | None:
    """The image stem a mask file belongs to (``x_mask.tif`` -> ``x``), or None for an image."""
    stem = path.name[: -len(path.suffix)]
    if mask_suffix and stem.endswith(mask_suffix) and len(stem) > len(mask_suffix):
        return stem[: -len(mask_suffix)]
    return None


def find_pairs(root: str | Path, mask_suffix: str = "_mask", require_masks: bool = True
               ) -> list[tuple[Path, Path | None]]:
    """``(image, mask)`` pairs of every image under ``root`` (recursive), sorted by image path.

    A mask is ``<stem><mask_suffix>`` with any of :data:`IMAGE_SUFFIXES` in the image's folder.
    Raises JaxsegError for a missing folder, a folder without images, two masks (or two images)
    for one stem, masks without an image, and, with ``require_masks``, images without a mask
    (all such files counted, the first named).
    """
    root = Path(root)
    if not root.is_dir():
        raise file_error(root, "no such folder" if not root.exists() else "is not a folder")
    images: dict[tuple[Path, str], Path] = {}
    masks: dict[tuple[Path, str], Path] = {}
    for path in sorted(p for p in root.rglob("*") if is_image_file(p) and p.is_file()):
        owner = mask_stem(path, mask_suffix)
        table, key = (masks, (path.parent, owner)) if owner is not None else (images, (path.parent, path.stem))
        if key in table:
            what = "masks" if owner is not None else "images"
            raise file_error(path, f"two {what} for {key[1]} in this folder (also {table[key].name})")
        table[key] = path
    if not images:
        raise JaxsegError(f"{root}: no images found ({', '.join(IMAGE_SUFFIXES)} files, masks named "
                          f"<image name>{mask_suffix}.<ext>)")
    orphans = sorted(masks[k] for k in masks if k not in images)
    if orphans:
        raise file_error(orphans[0], f"a mask without its image ({len(orphans)} such mask(s); an image "
                                     f"{orphans[0].name.replace(mask_suffix, '', 1)} was expected beside it)")
    if require_masks:
        unpaired = sorted(images[k] for k in images if k not in masks)
        if unpaired:
            p = unpaired[0]
            raise file_error(p, f"has no mask {p.stem}{mask_suffix}{p.suffix} ({len(unpaired)} image(s) "
                                "without a mask; check data.mask_suffix)")
    return sorted(((images[k], masks.get(k)) for k in images), key=lambda pair: str(pair[0]))


def read_pair(image_path: Path, mask_path: Path | None, channels: int | None = None
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image (H, W, C) float32, mask (H, W) uint8 0/1 or None)``; JaxsegError on a size mismatch."""
    image = read_image(image_path, channels)
    if mask_path is None:
        return image, None
    mask = read_mask(mask_path)
    if mask.shape != image.shape[:2]:
        raise file_error(mask_path, f"mask is {mask.shape[0]}x{mask.shape[1]} but its image {image_path.name} "
                                    f"is {image.shape[0]}x{image.shape[1]}")
    return image, mask
