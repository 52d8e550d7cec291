"""The batch loader that feeds the packed faces (facedata.py) to Paddle, and a preview of them.

`make_loader` yields float32 N x 3 x H x W tensors in [-1, 1] for one epoch at a time, in an
order that is a pure function of (seed, epoch), so that a resumed run reads what the
uninterrupted one would have. The dataset format and the image conventions are facedata.py's.

Examples:
    python dataReader.py                       # grid of 64 training images -> data/preview.png
    python dataReader.py --data mine           # -> mine/preview.png
    python dataReader.py --data data/celeba64 --flip --out preview.png
    python dataReader.py --size 16             # what a 16x16 stage of training sees
"""
import os
from dataclasses import dataclass

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import numpy as np
import paddle
from paddle.utils.dlpack import from_dlpack

from facedata import DatasetError, FaceDataset, grid_scale, make_grid, to_uint8, write_png
from options import at_least, build_parser, option, parse, refusing


class EpochBatchSampler:
    """Index batches for one epoch, a pure function of (seed, epoch).

    An epoch shows `epoch_images` images (default: the dataset once), taken from
    consecutive shuffled passes over the data; with `flip`, each image is mirrored
    with probability 1/2 (shown as index + n, see FaceDataset). With `replicas` > 1
    (several training processes), each step takes a global batch of batch_size x replicas
    and process `rank` gets its slice of it. `set_epoch(e, start=k)` resumes at batch k.
    """

    def __init__(self, n, batch_size, epoch_images=None, flip=False, seed=0, rank=0, replicas=1,
                 batch_size_at=None):
        self.n, self.batch_size = n, batch_size
        self.epoch_images = epoch_images or n
        self.flip, self.seed = flip, seed
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
            return [self.batch_size] * (self.epoch_images // (self.batch_size * self.replicas))
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
        order = np.concatenate([rng.permutation(self.n)
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


def make_loader(dataset, batch_size, flip=False, epoch_images=None, seed=0, num_workers=0, rank=0, replicas=1,
                batch_size_at=None):
    """Iterable of float32 N x 3 x H x W tensor batches; call loader.batch_sampler.set_epoch(e).

    num_workers=0 reads in the calling thread; more use Paddle's DataLoader processes, for
    GPU training where a step is short enough for reading to matter.
    """
    sampler = EpochBatchSampler(len(dataset), batch_size, epoch_images=epoch_images, flip=flip, seed=seed,
                                rank=rank, replicas=replicas, batch_size_at=batch_size_at)
    if num_workers == 0:
        return BatchLoader(dataset, sampler)
    return paddle.io.DataLoader(_Indices(2 * len(dataset)), batch_sampler=sampler,
                                collate_fn=dataset.get_batch, num_workers=num_workers)


# ----------------------------------------------------------------------------- CLI

@dataclass
class PreviewConfig:
    data: str = option("data", "dataset folder written by pretreat.py")
    out: str = option(None, "grid PNG to write (default: preview.png in the dataset folder)")
    num: int = option(64, "images in the grid", at_least(1))
    size: int = option(None, "read at this size, averaging pixel blocks, as training at --size does (default: as "
                       "stored)")
    flip: bool = option(False, "mirror about half of them, as training with --flip does")
    seed: int = option(0, "which images are drawn")


def main(argv=None):
    parser = build_parser(PreviewConfig, __doc__)
    cfg = parse(PreviewConfig, parser, argv)
    with refusing(parser, DatasetError):
        dataset = FaceDataset(cfg.data, size=cfg.size)
    loader = make_loader(dataset, min(cfg.num, len(dataset)), flip=cfg.flip, seed=cfg.seed)
    batch = next(iter(loader))
    out = cfg.out or os.path.join(dataset.folder, "preview.png")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    write_png(out, make_grid(to_uint8(batch.numpy())), scale=grid_scale(dataset.size))
    print(f"wrote {out}: {len(batch)} of {len(dataset)} images, "
          f"{dataset.size}x{dataset.size}, from {dataset.manifest['source']}")


if __name__ == "__main__":
    main()
