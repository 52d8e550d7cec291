"""Fixtures: CelebA-shaped photo folders and zips made from the LFW faces, and small datasets."""
import os
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
from skimage.data import lfw_subset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pretreat  # noqa: E402

CELEBA_W, CELEBA_H = 178, 218  # img_align_celeba's JPEGs are 178 wide, 218 high


def celeba_like(count):
    """`count` RGB uint8 218 x 178 photos from the LFW faces, tinted so channel order matters."""
    faces = np.rint(lfw_subset()[:count] * 255).astype(np.uint8)
    tint = np.array([1.0, 0.75, 0.5], np.float32)  # reddish: R > G > B everywhere
    out = []
    for face in faces:
        big = cv2.resize(face, (CELEBA_W, CELEBA_H), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        out.append(np.clip(big[..., None] * tint + 20, 0, 255).astype(np.uint8))
    return np.stack(out)


def write_jpegs(folder, photos):
    """Write RGB photos as 000001.jpg, 000002.jpg, ... (CelebA's names) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    for i, photo in enumerate(photos, 1):
        cv2.imwrite(os.path.join(folder, f"{i:06d}.jpg"), photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])


def zip_folder(folder, archive, prefix="img_align_celeba/"):
    """Zip the files of `folder` under `prefix`, with a folder entry, as CelebA's zip has."""
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(prefix, b"")
        for name in sorted(os.listdir(folder)):
            z.write(os.path.join(folder, name), prefix + name)


@pytest.fixture(scope="session")
def celeba_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("celeba") / "img_align_celeba"
    write_jpegs(str(folder), celeba_like(12))
    return str(folder)


@pytest.fixture(scope="session")
def celeba_zip(celeba_folder, tmp_path_factory):
    archive = str(tmp_path_factory.mktemp("celebazip") / "img_align_celeba.zip")
    zip_folder(celeba_folder, archive)
    return archive


def build_dataset(out, **options):
    """pretreat.build with `options`, quietly; returns the manifest."""
    return pretreat.build(pretreat.PretreatConfig(out=str(out), **options))


@pytest.fixture(scope="session")
def lfw8(tmp_path_factory):
    """The embedded LFW faces at 8x8: small enough to train a few iterations in a second."""
    out = tmp_path_factory.mktemp("lfw8")
    build_dataset(out, size=8)
    return str(out)


@pytest.fixture(scope="session")
def lfw32(tmp_path_factory):
    """The embedded LFW faces at the default size (32x32)."""
    out = tmp_path_factory.mktemp("lfw32")
    build_dataset(out)
    return str(out)


def run_script(script, *args, cwd=None, timeout=300):
    """Run `python script args` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_user_error(result, *phrases):
    """Exit code 2, one stderr line naming `phrases`, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for phrase in phrases:
        assert phrase in last, (phrase, result.stderr)


def sigint_after(calls):
    """A wrapper factory: functions it wraps send this process SIGINT once, after `calls` calls in all.

    The tests' way to interrupt training at an exact iteration with a real signal.
    """
    import signal
    count = [0]

    def wrap(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            count[0] += 1
            if count[0] == calls:
                os.kill(os.getpid(), signal.SIGINT)
            return out
        return wrapped
    return wrap
