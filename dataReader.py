"""The packed face dataset: its format, the image conventions, and a batch loader.

A dataset is a folder written by pretreat.py:
    images.npy      uint8 array N x H x W x 3 (RGB), read here through a memmap
    manifest.json   source, count, size, crop, skipped files; written last, so a
                    folder without it (or whose array disagrees with it) is refused

Image conventions used everywhere: uint8 HWC RGB on disk, float32 CHW in [-1, 1] in
the model; `to_float` and `to_uint8` are the only conversions between them.

Examples:
    python dataReader.py                       # grid of 64 training images -> data/preview.png
    python dataReader.py --data data/celeba64 --flip --out preview.png
    python dataReader.py --size 16                 # what a 16x16 stage of training sees
"""
import argparse
import json
import os
from dataclasses import dataclass

import cv2
import numpy as np

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import paddle  # noqa: E402
from paddle.utils.dlpack import from_dlpack  # noqa: E402

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


def grid_scale(size):
    """How much to enlarge a grid of size x size images so faces are visible in a viewer."""
    return max(1, 64 // size)


# ----------------------------------------------------------------------------- dataset

def open_dataset(folder):
    """(manifest, memmapped uint8 array) of the dataset in `folder`, checked against each other.

    Raises DatasetError, saying what to do, for a missing, incomplete or inconsistent dataset.
    """
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


class FaceDataset(paddle.io.Dataset):
    """The packed faces as float32 CHW in [-1, 1], optionally area-downsampled to `size`.

    Index i + len(self) is image i mirrored.
    """

    def __init__(self, folder, size=None):
        self.folder = folder
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


class EpochBatchSampler:
    """Index batches for one epoch, a pure function of (seed, epoch).

    An epoch shows `epoch_images` images (default: the dataset once), taken from
    consecutive shuffled passes over the data; with `flip`, each image is mirrored
    with probability 1/2 (shown as index + n, see FaceDataset). With `replicas` > 1
    (several training processes), each step takes a global batch of batch_size x replicas
    and process `rank` gets its slice of it. `set_epoch(e, start=k)` resumes at batch k.
    """

    def __init__(self, n, batch_size, epoch_images=None, shuffle=True, flip=False,
                 drop_last=True, seed=0, rank=0, replicas=1, batch_size_at=None):
        self.n, self.batch_size = n, batch_size
        self.epoch_images = epoch_images or n
        self.shuffle, self.flip, self.drop_last, self.seed = shuffle, flip, drop_last, seed
        self.rank, self.replicas = rank, replicas
        self.batch_size_at = batch_size_at  # images shown before a batch -> its size per process (progressive GANs)
        self.epoch, self.start, self.order, self.shown = 0, 0, None, 0

    def set_epoch(self, epoch, start=0, order=None, shown=0):
        """Choose which epoch's order the next iteration yields, from batch `start`.

        `order` replaces the computed order (a resumed run passes the one its checkpoint holds);
        `shown` is the number of images all epochs before this one showed (for batch_size_at).
        """
        self.epoch, self.start, self.shown = epoch, start, shown
        self.order = None if order is None else np.asarray(order)

    def _sizes(self):
        """Per-process batch sizes of this epoch, in order (the last partial batch dropped)."""
        if self.batch_size_at is None:
            full, rest = divmod(self.epoch_images, self.batch_size * self.replicas)
            return [self.batch_size] * full + ([] if self.drop_last or rest == 0 else [rest // self.replicas])
        sizes, pos = [], 0
        while True:
            size = self.batch_size_at(self.shown + pos)
            if pos + size * self.replicas > self.epoch_images:
                return sizes
            sizes.append(size)
            pos += size * self.replicas

    def __len__(self):
        return len(self._sizes())

    def epoch_order(self):
        """All indices of the current epoch, in the order they are shown (by all processes together)."""
        if self.order is not None:
            return self.order
        rng = np.random.default_rng([self.seed, self.epoch])
        passes = -(-self.epoch_images // self.n)
        order = np.concatenate([rng.permutation(self.n) if self.shuffle else np.arange(self.n)
                                for _ in range(passes)])[:self.epoch_images]
        if self.flip:
            order = order + self.n * rng.integers(0, 2, len(order))
        return order

    def __iter__(self):
        order, pos = self.epoch_order(), 0
        for b, size in enumerate(self._sizes()):
            if b >= self.start:
                yield order[pos + self.rank * size:pos + (self.rank + 1) * size].tolist()
            pos += size * self.replicas


class BatchLoader:
    """Tensor batches of one epoch, read in the calling thread.

    A 64x64 batch of 128 takes ~1-2 ms to read, a CPU training step about a second: a
    background thread would hide nothing, and Paddle's DataLoader thread costs more than
    the read itself (10-12k img/s through it on this 2-core machine; see benchmarks/).
    """

    def __init__(self, dataset, batch_sampler):
        self.dataset, self.batch_sampler = dataset, batch_sampler

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        on_cpu = paddle.get_device() == "cpu"
        for indices in self.batch_sampler:
            batch = self.dataset.get_batch(indices)
            # On the CPU Paddle takes the array as it is (DLPack keeps it alive); a GPU needs a copy.
            yield from_dlpack(batch) if on_cpu else paddle.to_tensor(batch)


class _Indices(paddle.io.Dataset):
    """Hands the sampler's indices to collate_fn untouched, so a worker reads a batch in one operation."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return index


def make_loader(dataset, batch_size, shuffle=True, drop_last=True, flip=False,
                epoch_images=None, seed=0, num_workers=0, rank=0, replicas=1, batch_size_at=None):
    """Iterable of float32 N x 3 x H x W tensor batches; call loader.batch_sampler.set_epoch(e).

    num_workers=0 reads in the calling thread; more use Paddle's DataLoader processes, for
    GPU training where a step is short enough for reading to matter.
    """
    sampler = EpochBatchSampler(len(dataset), batch_size, epoch_images=epoch_images,
                                shuffle=shuffle, flip=flip, drop_last=drop_last, seed=seed,
                                rank=rank, replicas=replicas, batch_size_at=batch_size_at)
    if num_workers == 0:
        return BatchLoader(dataset, sampler)
    return paddle.io.DataLoader(_Indices(2 * len(dataset)), batch_sampler=sampler,
                                collate_fn=dataset.get_batch, num_workers=num_workers)


# ----------------------------------------------------------------------------- CLI

@dataclass
class PreviewConfig:
    data: str = "data"               # dataset folder written by pretreat.py
    out: str = "data/preview.png"    # grid PNG to write
    num: int = 64                    # images in the grid
    size: int = None                 # read at this size (area-averaged); None: as stored
    flip: bool = False               # mirror about half of them, as training with --flip does
    seed: int = 0                    # which images are drawn


def main(argv=None):
    cfg = PreviewConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=cfg.data, help=f"dataset folder (default: {cfg.data})")
    parser.add_argument("--out", default=cfg.out, help=f"PNG to write (default: {cfg.out})")
    parser.add_argument("--num", type=int, default=cfg.num, help=f"images in the grid (default: {cfg.num})")
    parser.add_argument("--size", type=int, default=cfg.size,
                        help="read at this size, averaging pixel blocks (default: as stored)")
    parser.add_argument("--flip", action="store_true", help="mirror about half of them, as training does")
    parser.add_argument("--seed", type=int, default=cfg.seed, help=f"which images (default: {cfg.seed})")
    cfg = PreviewConfig(**vars(parser.parse_args(argv)))
    if cfg.num < 1:
        parser.error(f"--num must be at least 1, got {cfg.num}")
    try:
        dataset = FaceDataset(cfg.data, size=cfg.size)
    except DatasetError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    loader = make_loader(dataset, min(cfg.num, len(dataset)), flip=cfg.flip, seed=cfg.seed)
    batch = next(iter(loader))
    os.makedirs(os.path.dirname(cfg.out) or ".", exist_ok=True)
    write_png(cfg.out, make_grid(to_uint8(batch.numpy())), scale=grid_scale(dataset.size))
    print(f"wrote {cfg.out}: {len(batch)} of {len(dataset)} images, "
          f"{dataset.size}x{dataset.size}, from {dataset.manifest['source']}")


if __name__ == "__main__":
    main()
