"""pretreat.py: folder and zip agree, the tutorial's crop, colour handling, skips, the embedded default."""
import json
import os
import signal
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
from PIL import Image

import pretreat
from conftest import ROOT, assert_user_error, build_dataset, celeba_like, run_script, write_jpegs


def read(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return np.load(os.path.join(out, "images.npy")), json.load(f)


def test_folder_and_zip_give_the_same_array(celeba_folder, celeba_zip, tmp_path):
    from_folder = build_dataset(tmp_path / "a", src=celeba_folder)
    from_zip = build_dataset(tmp_path / "b", src=celeba_zip)
    a, _ = read(tmp_path / "a")
    b, _ = read(tmp_path / "b")
    assert a.shape == (12, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert from_folder["count"] == from_zip["count"] == 12
    assert from_zip["skipped_count"] == 0  # the zip's folder entry is not a file to decode


@pytest.mark.parametrize("size, expected", [(32, (39, 32, 5, 0)), (64, (78, 64, 10, 0)), (128, (157, 128, 20, 0))])
def test_tutorial_box_on_a_celeba_photo(size, expected):
    # 178 x 218 scaled to `size` wide, then the box starting 10 rows down at 64 px, scaled.
    assert pretreat.crop_box(218, 178, size, "tutorial") == expected


def test_center_box_and_tutorial_box_on_landscape_photos():
    assert pretreat.crop_box(100, 300, 64, "center") == (64, 192, 0, 64)
    assert pretreat.crop_box(100, 300, 64, "tutorial") == (64, 192, 0, 0)  # box moved up to fit


def test_crop_matches_the_tutorials_pil_method():
    h, w = 218, 178
    yy, xx = np.mgrid[0:h, 0:w]
    # Stripes across rows: a box one row off differs by 20+ grey levels on average.
    photo = np.stack([127 + 120 * np.sin(yy / 3.0), 127 + 120 * np.sin(xx / 5.0), yy * 255 / h], -1).astype(np.uint8)
    tutorial = np.asarray(Image.fromarray(photo).resize((64, 78), Image.BILINEAR).crop((0, 10, 64, 74)))
    ours = pretreat.crop_resize(photo, 64, "tutorial")
    assert ours.shape == (64, 64, 3)
    assert np.abs(ours.astype(int) - tutorial).mean() < 3


def test_channels_stay_rgb(celeba_folder, tmp_path):
    build_dataset(tmp_path, src=celeba_folder)
    images, _ = read(tmp_path)
    r, g, b = images[..., 0].astype(int), images[..., 1].astype(int), images[..., 2].astype(int)
    assert (r.mean() > g.mean() + 10) and (g.mean() > b.mean() + 10)  # the fixtures are tinted red


def test_grey_cmyk_and_rgba_inputs_become_rgb(tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    photo = celeba_like(1)[0]
    Image.fromarray(photo).convert("L").save(src / "grey.jpg")
    Image.fromarray(photo).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(photo).convert("RGBA").save(src / "rgba.png")
    Image.fromarray(photo).save(src / "rgb.png")
    manifest = build_dataset(tmp_path / "out", src=str(src))
    images, _ = read(tmp_path / "out")
    assert manifest["count"] == 4 and manifest["skipped_count"] == 0
    by_name = dict(zip(["cmyk", "grey", "rgb", "rgba"], images))  # sorted file names
    np.testing.assert_array_equal(by_name["rgba"], by_name["rgb"])
    grey = by_name["grey"].astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 1
    assert np.abs(by_name["cmyk"].astype(int) - by_name["rgb"]).mean() < 8


def bad_and_odd_files():
    """{name: bytes} of every bad and odd kind, and {name: reason} for those to be skipped."""
    photo = celeba_like(1)[0]
    good = cv2.imencode(".jpg", photo[..., ::-1])[1].tobytes()
    sof = good.index(b"\xff\xc0")
    png = lambda img: cv2.imencode(".png", img)[1].tobytes()  # noqa: E731
    files = {
        "000001.jpg": good,
        "000002.jpg": b"",                                                    # zero bytes
        "000003.jpg": b"<html>404 Not Found</html>",                          # not an image
        "000004.jpg": good[: len(good) * 6 // 10],                            # cut short
        "000005.jpg": good[:sof + 5] + b"\0\0\0\0" + good[sof + 9:],          # frame header says 0x0
        "000006.jpg": cv2.imencode(".jpg", photo[:20, :20])[1].tobytes(),     # 20x20: too small for 64
        "000007.jpg": cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY))[1].tobytes(),
        "000008.png": png(cv2.cvtColor(photo[..., ::-1], cv2.COLOR_BGR2BGRA)),  # RGBA PNG
        "000009.jpg": cv2.imencode(".jpg", cv2.resize(photo, (300, 150)))[1].tobytes(),  # landscape
        "000010.jpg": cv2.imencode(".jpg", cv2.resize(photo, (41, 37)))[1].tobytes(),    # odd, small but usable
        "000011.jpg": good + b"\0" * 100,                                     # padded after the end marker
        "notes.txt": b"not an image",
    }
    reasons = {"000002.jpg": "empty file", "000003.jpg": "not a readable image", "000004.jpg": "truncated JPEG",
               "000005.jpg": "corrupt JPEG", "000006.jpg": "too small (20x20) for 64 px",
               "notes.txt": "not a readable image"}
    return files, reasons


def check_bad_and_odd(manifest, out, reasons):
    assert {s["file"].split("/")[-1]: s["reason"] for s in manifest["skipped"]} == reasons
    assert manifest["skipped_count"] == 6 and manifest["count"] == 6
    assert manifest["skipped_reasons"]["not a readable image"] == 2
    images, _ = read(out)
    assert images.shape == (6, 64, 64, 3)  # the array was cut to the images written
    assert images.reshape(6, -1).std(axis=1).min() > 10  # every kept image holds a picture


def test_bad_and_odd_files_in_a_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files, reasons = bad_and_odd_files()
    for name, data in files.items():
        (src / name).write_bytes(data)
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "__MACOSX").mkdir()
    (src / "__MACOSX" / "._000001.jpg").write_bytes(b"\0" * 100)
    (src / ".thumbnails").mkdir()
    (src / ".thumbnails" / "a.jpg").write_bytes(files["000001.jpg"])
    manifest = build_dataset(tmp_path / "out", src=str(src))
    check_bad_and_odd(manifest, tmp_path / "out", reasons)


def test_bad_and_odd_entries_in_a_zip(tmp_path):
    files, reasons = bad_and_odd_files()
    archive = tmp_path / "odd.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("img_align_celeba/", b"")
        for name, data in files.items():
            z.writestr("img_align_celeba/" + name, data)
        z.writestr("__MACOSX/img_align_celeba/._000001.jpg", b"\0" * 64)
        z.writestr("img_align_celeba/.DS_Store", b"\0" * 64)
        z.writestr("../escape.jpg", files["000001.jpg"])
        z.writestr("/absolute.jpg", files["000001.jpg"])
    manifest = build_dataset(tmp_path / "out", src=str(archive))
    check_bad_and_odd(manifest, tmp_path / "out", reasons)
    assert manifest["ignored_count"] == 4
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "out" / "img_align_celeba").exists()


def test_jpeg_header_gives_the_decoded_size():
    data = cv2.imencode(".jpg", np.zeros((218, 178, 3), np.uint8))[1].tobytes()
    assert pretreat.jpeg_size(data) == (218, 178)
    assert pretreat.jpeg_size(b"\xff\xd8" + b"\x12" * 50) is None


@pytest.mark.parametrize("h, w, size, factor", [(218, 178, 64, 2), (218, 178, 32, 4), (218, 178, 128, 1),
                                                (218, 178, 16, 8), (100, 60, 64, 1)])
def test_reduced_decoding_keeps_the_shorter_side_at_least_size(h, w, size, factor):
    assert pretreat.reduction(h, w, size) == factor


@pytest.mark.parametrize("source, target, expected", [(178, 64, cv2.INTER_AREA), (89, 64, cv2.INTER_LINEAR),
                                                      (64, 64, cv2.INTER_LINEAR), (25, 32, cv2.INTER_CUBIC)])
def test_interpolation_rule(source, target, expected):
    assert pretreat.interpolation(source, target) == expected


def test_second_run_does_nothing_and_force_rebuilds(celeba_folder, tmp_path):
    out = tmp_path / "out"
    first = run_script("pretreat.py", "--src", celeba_folder, "--out", out)
    assert first.returncode == 0 and "wrote 12 images" in first.stdout
    stamp = os.stat(out / "images.npy").st_mtime_ns, os.stat(out / "manifest.json").st_mtime_ns
    again = run_script("pretreat.py", "--src", celeba_folder, "--out", out)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert (os.stat(out / "images.npy").st_mtime_ns, os.stat(out / "manifest.json").st_mtime_ns) == stamp
    other_size = build_dataset(out, src=celeba_folder, size=32)  # other options: rebuilt
    assert other_size["size"] == 32 and not other_size.get("up_to_date")
    build_dataset(out, src=celeba_folder)
    stamp = os.stat(out / "images.npy").st_mtime_ns
    forced = run_script("pretreat.py", "--src", celeba_folder, "--out", out, "--force")
    assert forced.returncode == 0 and "wrote 12 images" in forced.stdout
    assert os.stat(out / "images.npy").st_mtime_ns != stamp


def test_a_changed_source_is_rebuilt(tmp_path):
    src = tmp_path / "src"
    write_jpegs(str(src), celeba_like(3))
    assert build_dataset(tmp_path / "out", src=str(src))["count"] == 3
    write_jpegs(str(src), celeba_like(4))  # a fourth photo arrives
    assert build_dataset(tmp_path / "out", src=str(src))["count"] == 4


def big_zip(path, count):
    """A zip of `count` CelebA-sized JPEGs (one photo stored many times): a second or two of work."""
    data = cv2.imencode(".jpg", celeba_like(1)[0][..., ::-1])[1].tobytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i in range(count):
            z.writestr(f"img_align_celeba/{i:06d}.jpg", data)


@pytest.mark.parametrize("previous", [False, True])
def test_killed_run_leaves_no_half_dataset_and_the_next_run_completes(previous, tmp_path, celeba_folder):
    import facedata
    out = tmp_path / "out"
    if previous:
        build_dataset(out, src=celeba_folder)
        old = np.load(out / "images.npy")
    archive = tmp_path / "big.zip"
    big_zip(archive, 6000)
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "pretreat.py"), "--src", str(archive),
                              "--out", str(out), "--workers", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    child.stderr.read(len("pretreat:"))  # the progress bar: files are listed, writing has begun
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert (out / "images.npy.tmp").exists()  # it died mid-write
    if previous:  # the finished dataset it was replacing is still whole
        np.testing.assert_array_equal(facedata.FaceDataset(str(out)).images, old)
    else:
        with pytest.raises(facedata.DatasetError):
            facedata.FaceDataset(str(out))
    manifest = build_dataset(out, src=str(archive))
    assert manifest["count"] == 6000
    assert facedata.FaceDataset(str(out)).images.shape == (6000, 64, 64, 3)
    assert not (out / "images.npy.tmp").exists()


def test_embedded_default_in_an_empty_folder(tmp_path):
    result = run_script("pretreat.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LFW" in result.stderr and "img_align_celeba" in result.stderr
    images, manifest = read(tmp_path / "data")
    assert images.shape == (100, 32, 32, 3)
    assert manifest["embedded"] and manifest["count"] == 100
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey faces in three equal channels
    assert images.std() > 30  # faces, not a flat fill


def test_celeba_zip_in_the_working_folder_is_found(celeba_zip, tmp_path):
    os.symlink(celeba_zip, tmp_path / "img_align_celeba.zip")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert pretreat.find_default_source() == "img_align_celeba.zip"
    finally:
        os.chdir(cwd)


def test_missing_src_is_an_error_not_a_fallback(tmp_path):
    result = run_script("pretreat.py", "--src", tmp_path / "nowhere.zip", "--out", tmp_path / "out", cwd=tmp_path)
    assert_user_error(result, "does not exist")
    assert not (tmp_path / "out").exists()


def test_source_without_images_is_an_error(tmp_path):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    result = run_script("pretreat.py", "--src", src, "--out", tmp_path / "out", cwd=tmp_path)
    assert_user_error(result, "no readable image")
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / "images.npy").exists()


def test_shrink_npy_keeps_the_first_rows(tmp_path):
    path = str(tmp_path / "a.npy")
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(5, 2, 2, 3))
    a[:] = np.arange(5)[:, None, None, None]
    del a
    pretreat.shrink_npy(path, 3)
    b = np.load(path)
    assert b.shape == (3, 2, 2, 3)
    np.testing.assert_array_equal(b[:, 0, 0, 0], [0, 1, 2])


def test_deflated_zip_equals_the_folder(celeba_folder, tmp_path):
    archive = tmp_path / "deflated.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(os.listdir(celeba_folder)):
            z.write(os.path.join(celeba_folder, name), "img_align_celeba/" + name)
    build_dataset(tmp_path / "a", src=celeba_folder)
    build_dataset(tmp_path / "b", src=str(archive))
    np.testing.assert_array_equal(read(tmp_path / "a")[0], read(tmp_path / "b")[0])


def test_damaged_zip_member_is_skipped_with_its_reason(tmp_path):
    photos = [cv2.imencode(".jpg", p[..., ::-1])[1].tobytes() for p in celeba_like(2)]
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a.jpg", photos[0])
        z.writestr("b.jpg", photos[1])
    blob = archive.read_bytes()
    middle = photos[1][2000:2100]
    archive.write_bytes(blob.replace(middle, bytes(100)))  # flip bytes inside b.jpg's stored data
    manifest = build_dataset(tmp_path / "out", src=str(archive))
    assert manifest["count"] == 1
    assert manifest["skipped"] == [{"file": "b.jpg", "reason": "unreadable (CRC mismatch)"}]
