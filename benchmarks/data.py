"""Data pipeline speed and memory on CelebA-shaped JPEGs made from the LFW faces.

Builds --num varied 178x218 JPEGs (and a zip of them) in a temporary folder, then prints
one JSON line with:
    pretreat_folder_img_s, pretreat_zip_img_s   pretreat.build, in a fresh process each
    decode_img_s        read + cv2.imdecode only, on the same threads: the physical limit
    tutorial_img_s      the tutorial's method: PIL open, bilinear resize, crop, JPEG save,
                        8 threads
    peak_rss_{folder,zip}[_small]_mb  pretreat's peak RSS at --num and at --small images
    reader_img_s        batches of --batch through dataReader.make_loader (one epoch, flips)
and the ratios the issue asks about: each repeat runs every method back to back, and the
medians of the rates and of the per-repeat ratios are reported.

Examples:
    python benchmarks/data.py                        # 20,000 images, as issue 3 measures
    python benchmarks/data.py --num 2000 --small 500 --repeats 1
    python benchmarks/data.py --keep /tmp/celeba20k  # keep the JPEGs for other experiments
"""
import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CELEBA_W, CELEBA_H = 178, 218


@dataclass
class BenchConfig:
    num: int = 20000       # JPEGs to build and pack
    small: int = 2000      # the smaller run whose peak RSS the big one must not exceed by 10%
    size: int = 64         # pretreat --size
    workers: int = None    # pretreat and bare-decode threads; None: one per CPU core
    batch: int = 128       # reader batch size
    repeats: int = 5       # timed rounds of every measurement; medians are reported
    keep: str = None       # folder to build the JPEGs in and keep; None: a temporary one


def varied_photo(face, rng):
    """A 218 x 178 BGR photo from a 25x25 grey face: moved, scaled, turned, tinted, noisy."""
    angle, scale = rng.uniform(-8, 8), rng.uniform(0.9, 1.15)
    m = cv2.getRotationMatrix2D((12, 12), angle, scale)
    m[:, 2] += rng.uniform(-2, 2, 2)
    face = cv2.warpAffine(face, m, (25, 25), borderMode=cv2.BORDER_REFLECT)
    big = cv2.resize(face, (CELEBA_W, CELEBA_H), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    tint = rng.uniform(0.7, 1.2, 3) * rng.uniform(0.8, 1.1)
    photo = big[..., None] * tint + rng.normal(0, 6, (CELEBA_H, CELEBA_W, 3))
    return np.clip(photo, 0, 255).astype(np.uint8)[:, ::-1 if rng.random() < 0.5 else 1]


def build_photos(folder, num):
    """Write `num` CelebA-named JPEGs (quality 85-95, like the real set's ~10 KB files)."""
    from skimage.data import lfw_subset

    faces = np.rint(lfw_subset()[:100] * 255).astype(np.uint8)
    os.makedirs(folder, exist_ok=True)

    def one(i):
        path = os.path.join(folder, f"{i + 1:06d}.jpg")
        if not os.path.exists(path):
            rng = np.random.default_rng(i)
            photo = varied_photo(faces[i % 100], rng)
            cv2.imwrite(path, photo, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(85, 96))])
        return path

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as ex:
        return list(ex.map(one, range(num)))


def run_pretreat(src, out, size, workers):
    """pretreat.build in a fresh process: (seconds inside build, peak RSS in MB, manifest)."""
    code = (
        "import json, resource, sys, time; sys.path.insert(0, sys.argv[1]); import pretreat\n"
        "cfg = pretreat.PretreatConfig(src=sys.argv[2], out=sys.argv[3], size=int(sys.argv[4]),\n"
        "                              workers=int(sys.argv[5]) or None, force=True)\n"
        "t = time.perf_counter(); m = pretreat.build(cfg); dt = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps({'seconds': dt, 'rss_mb': rss, 'count': m['count'], 'skipped': m['skipped_count']}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, ROOT, src, out, str(size), str(workers or 0)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bare_decode(paths, workers):
    """Seconds to read and cv2.imdecode every file at full size on `workers` threads."""
    def one(path):
        with open(path, "rb") as f:
            return cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR).shape

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        for _ in ex.map(one, paths, chunksize=64):
            pass
    return time.perf_counter() - t


def tutorial_method(paths, out, size):
    """Seconds for the tutorial's pretreat: PIL open, bilinear resize, crop, JPEG save, 8 threads."""
    from PIL import Image

    os.makedirs(out, exist_ok=True)
    height = round(CELEBA_H * size / CELEBA_W)
    top = round(10 * size / 64)

    def one(path):
        with Image.open(path) as img:
            img = img.resize((size, height), Image.BILINEAR).crop((0, top, size, top + size))
            img.save(os.path.join(out, os.path.basename(path)), "JPEG")

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        for _ in ex.map(one, paths, chunksize=64):
            pass
    return time.perf_counter() - t


def reader_rate(folder, batch):
    """Images per second of one epoch through dataReader.make_loader (shuffled, mirrored)."""
    import dataReader
    import facedata

    dataset = facedata.FaceDataset(folder)
    loader = dataReader.make_loader(dataset, batch, flip=True)
    t, n = time.perf_counter(), 0
    for real in loader:
        n += real.shape[0]
    return n / (time.perf_counter() - t)


def main(argv=None):
    cfg = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("num", "small", "size", "workers", "batch", "repeats"):
        parser.add_argument("--" + name, type=int, default=getattr(cfg, name),
                            help=f"(default: {getattr(cfg, name)})")
    parser.add_argument("--keep", default=cfg.keep, help="build the JPEGs here and keep them")
    cfg = BenchConfig(**vars(parser.parse_args(argv)))
    if not 0 < cfg.small <= cfg.num:
        parser.error(f"--small must be between 1 and --num ({cfg.num}), got {cfg.small}")
    workers = cfg.workers or os.cpu_count()

    with tempfile.TemporaryDirectory() as tmp:
        photos = os.path.join(cfg.keep or tmp, "img_align_celeba")
        print(f"building {cfg.num} JPEGs in {photos} ...", file=sys.stderr)
        paths = build_photos(photos, cfg.num)
        archive = os.path.join(tmp, "img_align_celeba.zip")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for p in paths:
                z.write(p, "img_align_celeba/" + os.path.basename(p))
        small = os.path.join(tmp, "small")
        os.makedirs(small)
        small_archive = os.path.join(tmp, "small.zip")
        with zipfile.ZipFile(small_archive, "w", zipfile.ZIP_DEFLATED) as z:
            for p in paths[:cfg.small]:
                os.symlink(p, os.path.join(small, os.path.basename(p)))
                z.write(p, "img_align_celeba/" + os.path.basename(p))

        print("measuring ...", file=sys.stderr)
        # Each repeat measures every method back to back, so each ratio compares the same minute.
        seconds, rss = [], {"folder": [], "zip": []}
        for _ in range(cfg.repeats):
            folder = run_pretreat(photos, os.path.join(tmp, "ds"), cfg.size, cfg.workers)
            zipped = run_pretreat(archive, os.path.join(tmp, "dz"), cfg.size, cfg.workers)
            seconds.append({"decode": bare_decode(paths, workers),
                            "tutorial": tutorial_method(paths, os.path.join(tmp, "tutorial"), cfg.size),
                            "folder": folder["seconds"], "zip": zipped["seconds"]})
            rss["folder"].append(folder["rss_mb"])
            rss["zip"].append(zipped["rss_mb"])
            skipped = folder["skipped"]
        small_folder = run_pretreat(small, os.path.join(tmp, "dsmall"), cfg.size, cfg.workers)
        small_zip = run_pretreat(small_archive, os.path.join(tmp, "dsmallz"), cfg.size, cfg.workers)
        reader = statistics.median(reader_rate(os.path.join(tmp, "ds"), cfg.batch) for _ in range(cfg.repeats))

    def rate(method):
        return round(statistics.median(cfg.num / r[method] for r in seconds), 1)

    def ratio(slow, fast):
        return round(statistics.median(r[slow] / r[fast] for r in seconds), 2)

    result = {
        "images": cfg.num, "size": cfg.size, "workers": workers, "cpus": os.cpu_count(), "repeats": cfg.repeats,
        "pretreat_folder_img_s": rate("folder"),
        "pretreat_zip_img_s": rate("zip"),
        "decode_img_s": rate("decode"),
        "tutorial_img_s": rate("tutorial"),
        "folder_vs_tutorial": ratio("tutorial", "folder"),
        "zip_vs_tutorial": ratio("tutorial", "zip"),
        "folder_vs_decode": ratio("decode", "folder"),
        "zip_vs_decode": ratio("decode", "zip"),
        "peak_rss_folder_mb": round(max(rss["folder"]), 1),
        "peak_rss_folder_small_mb": round(small_folder["rss_mb"], 1),
        "peak_rss_zip_mb": round(max(rss["zip"]), 1),
        "peak_rss_zip_small_mb": round(small_zip["rss_mb"], 1),
        "small_images": cfg.small,
        "reader_img_s": round(reader, 1),
        "batch": cfg.batch,
        "skipped": skipped,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
