"""The packed face dataset and the image conventions, in numpy alone (no Paddle).

A dataset is a folder written by pretreat.py:
    images.npy      uint8 array N x H x W x 3 (RGB), read here through a memmap
    manifest.json   source, count, size, crop, skipped files; written last, so a
                    folder without it (or whose array disagrees with it) is refused

Image conventions used everywhere: uint8 HWC RGB on disk, float32 CHW in [-1, 1] in
the model; `to_float` and `to_uint8` are the only conversions between them. Files are
written atomically (`write_atomic`). pretreat.py and evaluate.py's metrics need nothing
more, so they start without loading Paddle; dataReader.py feeds these batches to Paddle.

Example:
    dataset = FaceDataset("data", size=32)        # also "data/images.npy"
    batch = dataset.get_batch([0, 5, 7 + len(dataset)])   # float32 3 x 3 x 32 x 32, the last mirrored
"""
import json
import os

import cv2
import numpy as np

IMAGES_FILE = "images.npy"
MANIFEST_FILE = "manifest.json"
FORMAT = "paddle-fakeface-dataset/1"


class DatasetError(Exception):
    """A dataset that is missing, incomplete or inconsistent; the message says what to do."""


# ----------------------------------------------------------------------------- files

def write_atomic(path, data, durable=False):
    """Write bytes to `path` through a temporary file and os.replace, so no half file is ever seen.

    `durable` also flushes the file and the rename to disk (fsync), so that a machine that
    loses power keeps either the old file or the new one: for checkpoints.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable and hasattr(os, "O_DIRECTORY"):
            fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------- images

def to_float(images, mirror_from=None):
    """uint8 (or float in [0, 255]) N x H x W x 3 -> C-contiguous float32 N x 3 x H x W in [-1, 1].

    Images from index `mirror_from` on are mirrored as they are converted (a reversed read,
    no extra copy).
    """
    n, h, w, c = images.shape
    k = n if mirror_from is None else mirror_from
    x = np.empty((n, c, h, w), np.float32)  # contiguous NCHW: Paddle takes it without a re-layout
    scale = np.float32(1 / 127.5)
    np.multiply(images[:k].transpose(0, 3, 1, 2), scale, out=x[:k], dtype=np.float32)
    np.multiply(images[k:, :, ::-1].transpose(0, 3, 1, 2), scale, out=x[k:], dtype=np.float32)
    x -= np.float32(1.0)
    return x


def to_uint8(x):
    """float N x 3 x H x W in [-1, 1] (tanh output) -> uint8 N x H x W x 3."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def enlarge(images, size):
    """uint8 N x h x w x 3 images repeated up to N x size x size x 3 (nearest neighbour), for display."""
    factor = size // images.shape[1]
    return images.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else images


def make_grid(images, ncols=None, pad=2, fill=255):
    """Tile uint8 N x H x W x 3 images into one uint8 image, `pad` pixels apart."""
    n, h, w, c = images.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    cells = np.full((nrows * ncols, h + pad, w + pad, c), fill, np.uint8)
    cells[:n, pad:, pad:] = images  # each cell: the image with a border above and to the left
    grid = cells.reshape(nrows, ncols, h + pad, w + pad, c).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(nrows * (h + pad), ncols * (w + pad), c)
    return np.pad(grid, ((0, pad), (0, pad), (0, 0)), constant_values=fill)  # and the last border


def write_png(path, image, scale=1):
    """Write a uint8 H x W x 3 RGB image as PNG, atomically; `scale` enlarges small images (nearest)."""
    if scale > 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    # OpenCV wants BGR; level 6 (zlib's usual) halves OpenCV's default file size for little time.
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    write_atomic(path, buf.tobytes())


def write_gif(path, frames, ms=60, scale=1):
    """Write uint8 N x H x W x 3 RGB frames as an animated GIF that loops forever, atomically;
    `ms` per frame, `scale` enlarges small frames (nearest)."""
    import io
    from PIL import Image  # imported here: only animations need it

    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0)
    write_atomic(path, buf.getvalue())


def grid_scale(size):
    """How much to enlarge a grid of size x size images so faces are visible in a viewer."""
    return max(1, 64 // size)


# ----------------------------------------------------------------------------- dataset

def dataset_folder(path):
    """The dataset folder that `path` names: the folder itself, or the one holding the images.npy
    or manifest.json it points at. DatasetError for any other file."""
    if os.path.isfile(path):
        if os.path.basename(path) in (IMAGES_FILE, MANIFEST_FILE):
            return os.path.dirname(path) or "."
        raise DatasetError(f"{path} is a file: --data takes the dataset folder that pretreat.py wrote "
                           f"(the one holding {IMAGES_FILE} and {MANIFEST_FILE})")
    return path


def open_dataset(folder):
    """(manifest, memmapped uint8 array) of the dataset in `folder`, checked against each other.

    `folder` may also be the path of its images.npy or manifest.json. Raises DatasetError,
    saying what to do, for a missing, incomplete or inconsistent dataset.
    """
    folder = dataset_folder(folder)
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    images_path = os.path.join(folder, IMAGES_FILE)
    if not os.path.isfile(manifest_path):
        if os.path.isdir(folder) and os.path.exists(images_path):
            raise DatasetError(f"dataset in {folder} is incomplete (no {MANIFEST_FILE}): "
                               "run `python pretreat.py` again")
        raise DatasetError(f"no dataset in {folder}: run `python pretreat.py` first, or pass --data")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {manifest_path} ({e}): run `python pretreat.py` again")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{manifest_path} is not a {FORMAT} manifest: run `python pretreat.py` again")
    try:
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {images_path} ({e}): run `python pretreat.py` again")
    size = manifest["size"]
    if images.dtype != np.uint8 or images.shape != (manifest["count"], size, size, 3):
        raise DatasetError(f"{images_path} holds {images.dtype} {list(images.shape)}, but the manifest "
                           f"promises uint8 {[manifest['count'], size, size, 3]}: run `python pretreat.py` again")
    if manifest["count"] == 0:
        raise DatasetError(f"dataset in {folder} holds no image: run `python pretreat.py` on other images")
    return manifest, images


def read_manifest(folder):
    """The manifest of the dataset in `folder`, checked against its array; raises DatasetError."""
    return open_dataset(folder)[0]


def area_downsample(images, factor):
    """Average `factor` x `factor` pixel blocks of float N x H x W x C images (area resampling)."""
    if factor == 1:
        return images
    n, h, w, c = images.shape
    return images.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4), dtype=np.float32)


class FaceDataset:
    """The packed faces as float32 CHW in [-1, 1], optionally area-downsampled to `size`.

    Index i + len(self) is image i mirrored.
    """

    def __init__(self, folder, size=None):
        self.folder = dataset_folder(folder)
        self.manifest, self.images = open_dataset(folder)
        stored = self.manifest["size"]
        self.size = size or stored
        if self.size > stored or stored % self.size:
            raise DatasetError(f"cannot read the {stored}x{stored} images of {folder} at {self.size}x{self.size}: "
                               f"choose a size that divides {stored}, or run pretreat.py with --size {self.size}")
        self.factor = stored // self.size

    def __getstate__(self):
        # Loader workers that are spawned get the path, not a pickled copy of the whole array.
        return {k: v for k, v in self.__dict__.items() if k != "images"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.images = open_dataset(self.folder)[1]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.get_batch([index])[0]

    def get_uint8(self, indices):
        """uint8 N x H x W x 3 images at this dataset's size, in the order of `indices`, unmirrored."""
        images = self.images[np.asarray(indices, dtype=np.int64)]
        if self.factor == 1:
            return images
        return np.rint(area_downsample(images.astype(np.float32), self.factor)).astype(np.uint8)

    def get_batch(self, indices):
        """Float32 N x 3 x H x W batch of `indices`, read with one fancy index.

        The order inside a batch means nothing to training, so the batch comes back as
        the plain images in ascending order, then the mirrored ones in ascending order:
        the memmap is read in sorted runs and mirroring happens during the float conversion.
        """
        indices = np.asarray(indices, dtype=np.int64)
        n = len(self.images)
        mirrored = indices >= n
        order = np.lexsort((indices % n, mirrored))
        batch = self.images[indices[order] % n]
        if self.factor > 1:
            batch = area_downsample(batch.astype(np.float32), self.factor)  # exact means, in [0, 255]
        return to_float(batch, mirror_from=int(len(indices) - mirrored.sum()))
