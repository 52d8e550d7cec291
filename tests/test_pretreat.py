"""pretreat.py: folder and zip agree, the tutorial's crop, colour handling, skips, the embedded default."""
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

import pretreat
from conftest import assert_user_error, build_dataset, celeba_like, run_script, write_jpegs, zip_folder


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


def test_unreadable_and_hidden_files(tmp_path):
    src = tmp_path / "src"
    write_jpegs(str(src), celeba_like(3))
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "__MACOSX").mkdir()
    (src / "__MACOSX" / "._000001.jpg").write_bytes(b"\0" * 100)
    manifest = build_dataset(tmp_path / "out", src=str(src))
    assert manifest["count"] == 3
    assert manifest["skipped"] == [{"file": "empty.jpg", "reason": "empty file"},
                                   {"file": "notes.txt", "reason": "not a readable image"}]
    images, _ = read(tmp_path / "out")
    assert images.shape == (3, 64, 64, 3)  # the array was cut to the images written


def test_zip_with_hidden_entries(tmp_path):
    folder = tmp_path / "img_align_celeba"
    write_jpegs(str(folder), celeba_like(2))
    archive = tmp_path / "c.zip"
    zip_folder(str(folder), str(archive))
    import zipfile
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("__MACOSX/img_align_celeba/._000001.jpg", b"\0" * 64)
        z.writestr("img_align_celeba/.DS_Store", b"\0" * 64)
    manifest = build_dataset(tmp_path / "out", src=str(archive))
    assert (manifest["count"], manifest["skipped_count"]) == (2, 0)


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
