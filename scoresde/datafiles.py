"""Your own training data from disk: an image folder or a NumPy array file.

* A folder of images (PNG, JPEG, BMP, GIF, WebP, TIFF; read with Pillow). Images directly in the
  folder are unlabelled; images in sub-folders get the label of their sub-folder (sorted names
  ``0..K-1``). Pixels ``0..255`` are scaled to ``[-1, 1]`` (``x / 127.5 - 1``). All greyscale
  gives 1 channel, any colour image makes every image RGB (3 channels). ``image_size`` resizes
  every image to ``image_size x image_size`` (bicubic); without it the sizes must agree.
* ``.npy``: an array ``(N, ...)``; ``.npz``: the array ``x`` (or its only array) and optional
  integer labels ``y``. ``uint8`` arrays are images and are scaled to ``[-1, 1]``; float arrays
  are used as they are. Images stored channels-last ``(N, H, W, C)`` with ``C`` in {1, 3} are
  moved to ``(N, C, H, W)``; ``(N, H, W)`` ``uint8`` gets one channel.

Every problem (missing path, empty folder, unreadable file, mixed sizes, NaN) raises a
``ValueError`` that names the file and what was expected.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .data import TensorData

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _images_in(folder: str) -> list[str]:
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
    )


def _list_images(root: str) -> tuple[list[str], list[int] | None, list[str]]:
    """``(files, labels or None, class names)`` of an image folder."""
    top = _images_in(root)
    classes = sorted(
        d
        for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and _images_in(os.path.join(root, d))
    )
    if top and classes:
        raise ValueError(
            f"{root!r} holds images both at the top level ({os.path.basename(top[0])}, ...) and "
            f"in class sub-folders ({', '.join(classes[:3])}); put every image in a class "
            "sub-folder, or none"
        )
    if classes:
        files, labels = [], []
        for k, name in enumerate(classes):
            found = _images_in(os.path.join(root, name))
            files += found
            labels += [k] * len(found)
        return files, labels, classes
    if not top:
        raise ValueError(
            f"no images found in {root!r}; expected files ending in {', '.join(IMAGE_EXTENSIONS)} "
            "in the folder or in one sub-folder per class"
        )
    return top, None, []


def load_image_folder(root: str, image_size: int | None = None) -> TensorData:
    """An image folder as :class:`TensorData` ``(N, C, H, W)`` in ``[-1, 1]`` (see the module doc)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("image folders need Pillow: pip install 'scoresde[data]'") from err
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size={image_size!r} must be a positive integer")
    files, labels, classes = _list_images(root)
    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                images.append(img.copy())
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {path!r}: {err}") from None
    mode = "L" if all(img.mode in GREY_MODES for img in images) else "RGB"
    arrays = []
    first_size = images[0].size
    for path, img in zip(files, images, strict=True):
        img = img.convert(mode)
        if image_size is not None:
            img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
        elif img.size != first_size:
            raise ValueError(
                f"mixed image sizes: {files[0]!r} is {first_size[0]}x{first_size[1]} but {path!r} "
                f"is {img.size[0]}x{img.size[1]}; pass --image-size N (image_size=N) to resize all"
            )
        a = np.asarray(img, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1.0
    y = None if labels is None else torch.tensor(labels)
    name = os.path.basename(os.path.normpath(root)) or "images"
    return TensorData(x, y, name=name, num_classes=len(classes) or None, value_range=(-1.0, 1.0))


def load_array_file(path: str) -> TensorData:
    """A ``.npy`` / ``.npz`` file as :class:`TensorData` (see the module doc)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path!r} as a NumPy array file: {err}") from None
    y = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            if "x" in keys:
                x = loaded["x"]
            elif len(keys) == 1:
                x = loaded[keys[0]]
            else:
                raise ValueError(
                    f"{path!r} holds arrays {keys}; expected one array, or 'x' (and labels 'y')"
                )
            if "y" in keys:
                y = loaded["y"]
    else:
        x = loaded
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(
            f"{path!r} holds an array of shape {x.shape}; expected (N, ...) with N >= 1"
        )
    if y is not None and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path!r}: labels 'y' have dtype {y.dtype}; expected integers")
    image = x.dtype == np.uint8
    if image and x.ndim == 3:
        x = x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if not (image or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{path!r} holds {x.dtype} data; expected floats or uint8 images")
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    if image:
        t = t / 127.5 - 1.0
    elif not bool(torch.isfinite(t).all()):
        raise ValueError(f"{path!r} contains NaN or Inf values")
    name = os.path.splitext(os.path.basename(path))[0]
    return TensorData(
        t,
        None if y is None else torch.from_numpy(y.astype(np.int64)),
        name=name,
        value_range=(-1.0, 1.0) if image else None,
    )


def load_path(path: str, image_size: int | None = None) -> TensorData:
    """Training data from ``path``: an image folder, a ``.npy`` or a ``.npz`` file."""
    if not os.path.exists(path):
        raise ValueError(f"data path {path!r} does not exist")
    if os.path.isdir(path):
        return load_image_folder(path, image_size)
    if path.lower().endswith((".npy", ".npz")):
        if image_size is not None:
            raise ValueError("image_size (--image-size) applies to image folders only")
        return load_array_file(path)
    raise ValueError(f"data path {path!r} is neither a folder of images nor a .npy/.npz file")


__all__ = ["IMAGE_EXTENSIONS", "load_array_file", "load_image_folder", "load_path"]
