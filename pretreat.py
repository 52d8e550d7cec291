"""Crop and resize face photos into one packed dataset that train.py reads.

Reads a folder of images or a zip such as img_align_celeba.zip in place (nothing is
extracted), crops and resizes every image on a thread pool, and streams the result into
<out>/images.npy (uint8 N x H x W x 3, RGB) with <out>/manifest.json written last. With no
--src it uses ./img_align_celeba or ./img_align_celeba.zip if present, and otherwise the 100
LFW faces that scikit-image ships, so everything runs offline.

Empty, non-image, truncated and corrupt files, and images too small for --size, are skipped
and listed in the manifest with the reason. A second run with the same source and options
does nothing (--force rebuilds). An interrupted run leaves the previous dataset, or none.

Examples:
    python pretreat.py                                   # CelebA if here, else the LFW faces
    python pretreat.py --src img_align_celeba.zip        # CelebA, 64x64, the tutorial's crop
    python pretreat.py --src ~/photos --crop center --size 128 --out data/photos128
"""
import collections
import concurrent.futures
import os
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone

import cv2
import numpy as np

from facedata import FORMAT, IMAGES_FILE, MANIFEST_FILE, DatasetError, read_manifest, write_json
from logs import progress
from options import at_least, build_parser, option, parse, refusing

CELEBA_NAMES = ("img_align_celeba", "img_align_celeba.zip")
EMBEDDED = "embedded:skimage.data.lfw_subset[:100]"
EMBEDDED_SIZE = 32      # the LFW faces are 25x25: 32 is the nearest size the networks build
TUTORIAL_SIZE = 64
TUTORIAL_TOP = 10       # the tutorial crops the box (0, 10, 64, 74) after resizing to 64 wide
MIN_SCALE = 0.5         # an image whose shorter side is below size * MIN_SCALE is too small
CHUNK = 64              # images per thread task: fewer futures, less GIL traffic per image
REMAP_BYTES = 16 << 20  # written pages of a memmap count as our memory until it is re-mapped
REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
           4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def existing(path):
    return None if os.path.exists(path) else (f"{path} does not exist: give a folder or .zip of images, or leave "
                                              "--src out to use ./img_align_celeba or the built-in LFW faces")


@dataclass
class PretreatConfig:
    src: str = option(None, "folder or .zip of images (default: ./img_align_celeba[.zip] if here, else the LFW "
                      "faces)", existing)
    out: str = option("data", "dataset folder to write")
    size: int = option(None, f"output side in pixels (default: {TUTORIAL_SIZE}; {EMBEDDED_SIZE} for the 25x25 LFW "
                       "faces)", at_least(4))
    crop: str = option("tutorial", "tutorial: the CelebA box starting 10/64 of the size down, after scaling; "
                       "center: a centred square, for other photos", choices=("tutorial", "center"))
    workers: int = option(None, "decoding threads (default: one per CPU core)", at_least(1))
    force: bool = option(False, "rebuild even if the dataset is up to date")


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


def interpolation(source_side, target_side):
    """OpenCV interpolation to scale a side of `source_side` pixels to `target_side`.

    Shrinking by 2x or more: INTER_AREA (box averaging, no aliasing). Shrinking by less
    (what is left after the JPEG decoder's own 2/4/8x DCT reduction): INTER_LINEAR, which
    on CelebA-shaped faces differs from full decode + INTER_AREA by 0.70 grey levels against
    INTER_AREA's 0.65, and takes 12 us instead of 68 us in OpenCV 5, whose non-integer
    INTER_AREA has no fast path. Enlarging: INTER_CUBIC.
    """
    if target_side > source_side:
        return cv2.INTER_CUBIC
    return cv2.INTER_AREA if source_side >= 2 * target_side else cv2.INTER_LINEAR


def crop_resize(image, size, crop):
    """A size x size crop of an H x W x C uint8 image, per `crop_box`."""
    sh, sw, top, left = crop_box(image.shape[0], image.shape[1], size, crop)
    scaled = cv2.resize(image, (sw, sh), interpolation=interpolation(min(image.shape[:2]), size))
    return scaled[top:top + size, left:left + size]


# ----------------------------------------------------------------------------- decoding

def jpeg_size(data):
    """(height, width) from a JPEG's SOF header, or None; OpenCV cannot read a header alone."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOF0..SOF15
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def reduction(height, width, size):
    """The largest JPEG decode reduction (1, 2, 4, 8) that keeps the shorter side >= size."""
    factor = 1
    while factor < 8 and min(height, width) // (2 * factor) >= size:
        factor *= 2
    return factor


def decode(data, size, crop):
    """(RGB uint8 size x size x 3, None) from encoded image bytes, or (None, reason)."""
    if not data:
        return None, "empty file"
    is_jpeg = data[:2] == b"\xff\xd8"  # SOI marker
    factor = 1
    if is_jpeg:
        # Entropy-coded data never holds FF D9 (FF is stuffed as FF 00), so its absence near
        # the end means the file was cut short; OpenCV would fill the rest with grey.
        if b"\xff\xd9" not in data[-1024:]:
            return None, "truncated JPEG"
        dims = jpeg_size(data)
        if dims and min(dims) > 0:
            factor = reduction(*dims, size)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[factor])  # grey, CMYK, RGBA -> BGR
    if image is None:
        # A JPEG whose scan data is damaged but whose structure is intact is decoded by libjpeg
        # with a warning on stderr, and kept: OpenCV offers no way to make that an error.
        return None, "corrupt JPEG" if is_jpeg else "not a readable image"
    short = min(image.shape[:2]) * factor
    if short < size * MIN_SCALE:
        return None, f"too small ({image.shape[1] * factor}x{image.shape[0] * factor}) for {size} px"
    return cv2.cvtColor(crop_resize(image, size, crop), cv2.COLOR_BGR2RGB), None


# ----------------------------------------------------------------------------- sources

def ignored(path):
    """True for names no photo has: hidden files, macOS resource forks, absolute or '..' paths."""
    parts = path.replace("\\", "/").split("/")
    return (path.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts
            or any(p.startswith(".") or p == "__MACOSX" for p in parts if p))


def read_member(fd, info):
    """The bytes of a stored or deflated zip member, read with os.pread and inflated by zlib.

    Both release the GIL, so decoding threads read members in parallel; zipfile.read holds
    the GIL for most of its 64 us per member and queues members behind one file lock.
    """
    header = os.pread(fd, 30, info.header_offset)  # the local file header
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    data = os.pread(fd, info.compress_size, info.header_offset + 30 + name_len + extra_len)
    if info.compress_type == zipfile.ZIP_DEFLATED:
        data = zlib.decompress(data, -15)
    if zlib.crc32(data) != info.CRC:
        raise zipfile.BadZipFile("CRC mismatch")
    return data


class Source:
    """The image files of a folder or zip: sorted names, their bytes, and a fingerprint."""

    def __init__(self, path):
        self.path, self.archive, self.fd = path, None, None
        if os.path.isdir(path):
            names = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not ignored(d))
                names += [os.path.relpath(os.path.join(root, f), path) for f in files]
        else:
            try:
                self.archive = zipfile.ZipFile(path)
            except (OSError, zipfile.BadZipFile) as e:
                raise DatasetError(f"--src {path} is neither a folder nor a readable zip ({e})")
            self.members = {i.filename: i for i in self.archive.infolist() if not i.is_dir()}
            names = list(self.members)
            if hasattr(os, "pread"):  # not on Windows, where zipfile reads every member
                self.fd = os.open(path, os.O_RDONLY)
        self.names = sorted(n for n in names if not ignored(n))
        self.ignored = len(names) - len(self.names)

    def read(self, name):
        """The bytes of file `name`; a zip member is read in memory, never extracted."""
        if self.archive is None:
            with open(os.path.join(self.path, name), "rb") as f:
                return f.read()
        info = self.members[name]
        fast = (self.fd is not None and not info.flag_bits & 0x1  # not encrypted
                and info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))
        return read_member(self.fd, info) if fast else self.archive.read(name)

    def fingerprint(self):
        """What identifies this source's content cheaply: path, file count, bytes, newest change."""
        if self.archive is not None:
            st = os.stat(self.path)
            return {"path": os.path.abspath(self.path), "files": len(self.names),
                    "bytes": st.st_size, "mtime": int(st.st_mtime)}
        stats = [os.stat(os.path.join(self.path, n)) for n in self.names]
        return {"path": os.path.abspath(self.path), "files": len(self.names),
                "bytes": sum(s.st_size for s in stats), "mtime": int(max((s.st_mtime for s in stats), default=0))}

    def close(self):
        if self.archive is not None:
            self.archive.close()
        if self.fd is not None:
            os.close(self.fd)


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
    pending = collections.deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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


def up_to_date(out, request):
    """The manifest of the dataset in `out` if it was built from `request`'s source and options."""
    try:
        manifest = read_manifest(out)
    except DatasetError:
        return None
    return manifest if manifest.get("request") == request else None


def write_images(source, size, crop, workers, tmp_path):
    """Decode, crop and resize every file of `source` into a new .npy at `tmp_path`.

    Returns (written, skipped): threads decode chunks of files, this thread alone writes
    them in order into the memmap, so memory holds a few chunks, never the whole set.
    """
    names = source.names
    out = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=(len(names), size, size, 3))
    written, skipped, mapped_at = 0, [], 0
    remap_every = max(1, REMAP_BYTES // (size * size * 3))

    def work(start):
        results = []
        for name in names[start:start + CHUNK]:
            try:
                data = source.read(name)
            except (OSError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as e:
                results.append((None, f"unreadable ({e})"))  # RuntimeError: zipfile's "password required"
            else:
                results.append(decode(data, size, crop))
        return results

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # parallelism comes from our threads; OpenCV's own pool would only contend
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as executor, \
                progress(total=len(names), unit="img", desc="pretreat") as bar:
            starts = range(0, len(names), CHUNK)
            for start, results in zip(starts, ordered_map(executor, work, starts, in_flight=2 * workers)):
                for name, (image, reason) in zip(names[start:start + CHUNK], results):
                    if image is None:
                        skipped.append({"file": name, "reason": reason})
                    else:
                        out[written] = image
                        written += 1
                if written - mapped_at >= remap_every:
                    # Flush and map again, so RSS stays flat: the pages live on in the page cache.
                    out.flush()
                    out = np.lib.format.open_memmap(tmp_path, mode="r+")
                    mapped_at = written
                bar.update(len(results))
                bar.set_postfix(skipped=len(skipped), refresh=False)
        out.flush()
    finally:
        cv2.setNumThreads(threads)
        del out
    if 0 < written < len(names):
        shrink_npy(tmp_path, written)
    return written, skipped


def build(cfg):
    """Write the dataset described by `cfg` unless it is up to date; returns its manifest.

    Raises DatasetError for a source with no readable image. Until the new array and
    manifest are both in place, the folder holds the previous dataset or none at all.
    """
    src = cfg.src if cfg.src is not None else find_default_source()
    size = cfg.size or (EMBEDDED_SIZE if src is None else TUTORIAL_SIZE)
    source = Source(src) if src is not None else None
    try:
        request = {"source": source.fingerprint() if source else EMBEDDED, "size": size,
                   "crop": "none (already face crops)" if source is None else cfg.crop}
        existing = None if cfg.force else up_to_date(cfg.out, request)
        if existing is not None:
            return dict(existing, up_to_date=True)
        if source is not None and not source.names:
            raise DatasetError(f"--src {src} holds no file: point --src at a folder or zip of images")

        os.makedirs(cfg.out, exist_ok=True)
        images_path = os.path.join(cfg.out, IMAGES_FILE)
        manifest_path = os.path.join(cfg.out, MANIFEST_FILE)
        tmp_path = f"{images_path}.tmp"
        try:
            if source is None:
                faces = embedded_faces(size)
                with open(tmp_path, "wb") as f:  # a file object: np.save adds no ".npy" to its name
                    np.save(f, faces, allow_pickle=False)
                written, skipped = len(faces), []
            else:
                workers = cfg.workers or os.cpu_count() or 1
                written, skipped = write_images(source, size, cfg.crop, workers, tmp_path)
            if written == 0:
                raise DatasetError(f"no readable image in {src}: point --src at a folder or zip of JPEG/PNG files")
            if os.path.exists(manifest_path):
                os.remove(manifest_path)  # the old dataset stops being valid before its array is replaced
            os.replace(tmp_path, images_path)
        finally:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
    finally:
        if source is not None:
            source.close()

    manifest = {
        "format": FORMAT,
        "source": os.path.abspath(src) if src else EMBEDDED,
        "embedded": src is None,
        "count": written,
        "size": size,
        "crop": request["crop"],
        "skipped_count": len(skipped),
        "skipped_reasons": dict(collections.Counter(s["reason"] for s in skipped)),
        "ignored_count": source.ignored if source else 0,
        "skipped": skipped,
        "request": request,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(manifest_path, manifest)  # last: its presence marks the dataset complete
    return manifest


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    parser = build_parser(PretreatConfig, __doc__)
    cfg = parse(PretreatConfig, parser, argv)
    if cfg.src is None and find_default_source() is None:
        print("no --src and no ./img_align_celeba[.zip]: using the 100 LFW faces shipped with scikit-image "
              "(for CelebA, put img_align_celeba.zip here or pass --src PATH)", file=sys.stderr)
    with refusing(parser, DatasetError):
        manifest = build(cfg)
    where = os.path.join(cfg.out, IMAGES_FILE)
    if manifest.get("up_to_date"):
        print(f"{where} is up to date: {manifest['count']} images of {manifest['size']}x{manifest['size']} "
              f"from {manifest['source']} (--force rebuilds)")
        return
    reasons = ", ".join(f"{n} {r}" for r, n in manifest["skipped_reasons"].items())
    print(f"wrote {manifest['count']} images of {manifest['size']}x{manifest['size']} to {where}; "
          f"skipped {manifest['skipped_count']}{f' ({reasons})' if reasons else ''}, "
          f"ignored {manifest['ignored_count']} hidden or odd names; details in "
          f"{os.path.join(cfg.out, MANIFEST_FILE)}")


if __name__ == "__main__":
    main()
