"""Crop and resize face photos into one packed dataset that train.py reads.

Reads a folder of images or a zip such as img_align_celeba.zip directly (nothing is
extracted), crops and resizes every image on a thread pool, and writes <out>/images.npy
(uint8 N x H x W x 3, RGB) and <out>/manifest.json. With no --src it uses ./img_align_celeba
or ./img_align_celeba.zip if present, and otherwise the 100 LFW faces that scikit-image
ships, so everything runs offline.

Examples:
    python pretreat.py                                   # CelebA if here, else the LFW faces
    python pretreat.py --src img_align_celeba.zip        # CelebA, 64x64, the tutorial's crop
    python pretreat.py --src ~/photos --crop center --size 128 --out data/photos128
"""
import argparse
import concurrent.futures
import os
import sys
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import cv2
import numpy as np
from tqdm import tqdm

from dataReader import FORMAT, IMAGES_FILE, MANIFEST_FILE, write_json

CELEBA_NAMES = ("img_align_celeba", "img_align_celeba.zip")
EMBEDDED = "embedded:skimage.data.lfw_subset[:100]"
EMBEDDED_SIZE = 32      # the LFW faces are 25x25: 32 is the nearest size the networks build
TUTORIAL_SIZE = 64
TUTORIAL_TOP = 10       # the tutorial crops the box (0, 10, 64, 74) after resizing to 64 wide


@dataclass
class PretreatConfig:
    src: str = None          # folder or .zip of images; None: ./img_align_celeba[.zip], else LFW
    out: str = "data"        # dataset folder to write
    size: int = None         # output side in pixels; None: 64 (32 for the 25x25 LFW faces)
    crop: str = "tutorial"   # tutorial: box at (0, 10*size/64) after scaling; center: centred box
    workers: int = None      # decoding threads; None: one per CPU core


# ----------------------------------------------------------------------------- geometry

def crop_box(height, width, size, crop):
    """(scaled_h, scaled_w, top, left): scale the shorter side to `size`, then the crop's corner."""
    scale = size / min(height, width)
    sh, sw = max(size, round(height * scale)), max(size, round(width * scale))
    if crop == "tutorial":
        # The tutorial's box starts 10 rows down at 64 px (skipping the top of the hair),
        # scaled with the size; moved up when the scaled image is too short for it.
        return sh, sw, min(round(TUTORIAL_TOP * size / TUTORIAL_SIZE), sh - size), 0
    return sh, sw, (sh - size) // 2, (sw - size) // 2


def crop_resize(image, size, crop):
    """A size x size crop of an H x W x C uint8 image, per `crop_box`."""
    sh, sw, top, left = crop_box(image.shape[0], image.shape[1], size, crop)
    shrinking = sh <= image.shape[0]
    scaled = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return scaled[top:top + size, left:left + size]


def decode(data, size, crop):
    """(RGB uint8 size x size x 3, None) from encoded image bytes, or (None, reason)."""
    if not data:
        return None, "empty file"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # grey, CMYK, RGBA -> BGR
    if image is None:
        return None, "not a readable image"
    return cv2.cvtColor(crop_resize(image, size, crop), cv2.COLOR_BGR2RGB), None


# ----------------------------------------------------------------------------- sources

def _hidden(path):
    parts = path.replace("\\", "/").split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts if p)


def list_folder(folder):
    """Sorted relative paths of the non-hidden files under `folder`."""
    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        names += [os.path.relpath(os.path.join(root, f), folder) for f in files if not _hidden(f)]
    return sorted(names)


def list_zip(archive):
    """Sorted names of the non-hidden file entries of an open ZipFile."""
    return sorted(i.filename for i in archive.infolist() if not i.is_dir() and not _hidden(i.filename))


def embedded_faces(size):
    """The first 100 LFW faces of scikit-image (25x25 grey) as uint8 size x size x 3 RGB."""
    from skimage.data import lfw_subset  # imported here: only this source needs it

    faces = np.rint(lfw_subset()[:100] * 255).astype(np.uint8)
    faces = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in faces])
    return np.repeat(faces[..., None], 3, axis=3)


def find_default_source():
    """./img_align_celeba or ./img_align_celeba.zip if present, else None (the embedded faces)."""
    for name in CELEBA_NAMES:
        if os.path.exists(name):
            return name
    return None


# ----------------------------------------------------------------------------- writing

def ordered_map(executor, fn, items, in_flight):
    """executor.map with at most `in_flight` tasks pending, so memory does not grow with len(items)."""
    pending = []
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= in_flight:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def shrink_npy(path, count):
    """Cut the .npy array at `path` to its first `count` rows, in place."""
    fmt = np.lib.format
    with open(path, "r+b") as f:
        if fmt.read_magic(f) != (1, 0):
            raise ValueError(f"{path}: expected a version 1.0 .npy file")
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
        offset = f.tell()
        f.seek(0)
        fmt.write_array_header_1_0(f, {"descr": fmt.dtype_to_descr(dtype), "fortran_order": fortran,
                                       "shape": (count,) + shape[1:]})
        # numpy pads the header so that axis 0 can change in place
        assert f.tell() == offset, "npy header changed length"
        f.truncate(offset + count * int(np.prod(shape[1:])) * dtype.itemsize)


def build(cfg, progress=True):
    """Write the dataset described by `cfg`; returns its manifest. Raises ValueError for bad input."""
    src = cfg.src if cfg.src is not None else find_default_source()
    size = cfg.size or (EMBEDDED_SIZE if src is None else TUTORIAL_SIZE)
    os.makedirs(cfg.out, exist_ok=True)
    images_path = os.path.join(cfg.out, IMAGES_FILE)
    manifest_path = os.path.join(cfg.out, MANIFEST_FILE)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # the old dataset stops being valid before its array is replaced

    archive = None
    if src is None:
        names, faces = [f"lfw_{i:03d}" for i in range(100)], embedded_faces(size)
        work = list(zip(names, faces))
        process = lambda item: (item[1], None)  # noqa: E731
    elif os.path.isdir(src):
        names = list_folder(src)

        def process(name):
            with open(os.path.join(src, name), "rb") as f:
                return decode(f.read(), size, cfg.crop)
        work = names
    else:
        try:
            archive = zipfile.ZipFile(src)
        except (OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"--src {src} is neither a folder nor a readable zip ({e})")
        names = list_zip(archive)
        process = lambda name: decode(archive.read(name), size, cfg.crop)  # noqa: E731
        work = names
    if not names:
        raise ValueError(f"--src {src} holds no file: point --src at a folder or zip of images")

    tmp_path = f"{images_path}.tmp"
    out = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=(len(names), size, size, 3))
    written, skipped = 0, []
    workers = cfg.workers or os.cpu_count() or 1
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as executor:
            results = ordered_map(executor, process, work, in_flight=4 * workers)
            for name, (image, reason) in tqdm(zip(names, results), total=len(names), unit="img",
                                              desc="pretreat", disable=not progress):
                if image is None:
                    skipped.append({"file": name, "reason": reason})
                else:
                    out[written] = image
                    written += 1
        out.flush()
        del out
        if written == 0:
            raise ValueError(f"no readable image in {src}: point --src at a folder or zip of JPEG/PNG files")
        if written < len(names):
            shrink_npy(tmp_path, written)
        os.replace(tmp_path, images_path)
    finally:
        if archive is not None:
            archive.close()
        if os.path.exists(tmp_path):
            os.remove(tmp_path)

    manifest = {
        "format": FORMAT,
        "source": os.path.abspath(src) if src else EMBEDDED,
        "embedded": src is None,
        "count": written,
        "size": size,
        "crop": "none (already face crops)" if src is None else cfg.crop,
        "skipped_count": len(skipped),
        "skipped": skipped,
        "options": asdict(cfg),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(manifest_path, manifest)  # last: its presence marks the dataset complete
    return manifest


# ----------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    """PretreatConfig from the command line, with bad values refused."""
    cfg = PretreatConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=cfg.src,
                        help="folder or .zip of images (default: ./img_align_celeba[.zip], else the LFW faces)")
    parser.add_argument("--out", default=cfg.out, help=f"dataset folder to write (default: {cfg.out})")
    parser.add_argument("--size", type=int, default=cfg.size,
                        help=f"output side in pixels (default: {TUTORIAL_SIZE}; {EMBEDDED_SIZE} for the LFW faces)")
    parser.add_argument("--crop", default=cfg.crop, choices=["tutorial", "center"],
                        help="tutorial: the CelebA box starting 10/64 of the size down; "
                             "center: a centred square, for other photos (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=cfg.workers,
                        help="decoding threads (default: one per CPU core)")
    cfg = PretreatConfig(**vars(parser.parse_args(argv)))
    if cfg.size is not None and cfg.size < 4:
        parser.error(f"--size must be at least 4 pixels, got {cfg.size}")
    if cfg.workers is not None and cfg.workers < 1:
        parser.error(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.src is not None and not os.path.exists(cfg.src):
        parser.error(f"--src {cfg.src} does not exist: give a folder or .zip of images, "
                     "or leave --src out to use ./img_align_celeba or the built-in LFW faces")
    return cfg, parser


def main(argv=None):
    cfg, parser = parse_args(argv)
    if cfg.src is None and find_default_source() is None:
        print("no --src and no ./img_align_celeba[.zip]: using the 100 LFW faces shipped with scikit-image "
              "(for CelebA, put img_align_celeba.zip here or pass --src PATH)", file=sys.stderr)
    try:
        manifest = build(cfg)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"wrote {manifest['count']} images of {manifest['size']}x{manifest['size']} to "
          f"{os.path.join(cfg.out, IMAGES_FILE)}; skipped {manifest['skipped_count']} "
          f"(reasons in {os.path.join(cfg.out, MANIFEST_FILE)})")


if __name__ == "__main__":
    main()
