"""dataReader.py: value range and shapes, mirroring, the epoch sampler, refusing broken datasets."""
import json
import os

import numpy as np
import pytest

import dataReader
import facedata
from conftest import build_dataset, run_script


def test_conversions_round_trip_exactly():
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    x = facedata.to_float(images)
    assert x.shape == (3, 3, 5, 7) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(facedata.to_uint8(x), images)
    np.testing.assert_array_equal(facedata.to_uint8(np.array([[[[-3.0, -1.0, 0.0, 1.0, 9.0]]]])).ravel(),
                                  [0, 0, 128, 255, 255])  # clipped, (x + 1) * 127.5 rounded


def test_batches_are_float_chw_in_range(lfw32):
    dataset = facedata.FaceDataset(lfw32)
    loader = dataReader.make_loader(dataset, 16)
    batch = next(iter(loader)).numpy()
    assert batch.shape == (16, 3, 32, 32) and batch.dtype == np.float32
    assert -1 <= batch.min() < -0.5 and 0.5 < batch.max() <= 1
    assert len(loader) == 100 // 16  # drop_last


def test_batch_read_equals_the_stored_images(lfw32):
    dataset = facedata.FaceDataset(lfw32)
    stored = np.load(os.path.join(lfw32, "images.npy"))
    batch = dataset.get_batch([7, 3, 3, 0])  # returned in ascending image order
    np.testing.assert_array_equal(facedata.to_uint8(batch), stored[[0, 3, 3, 7]])
    mirrored = dataset.get_batch([7 + len(dataset)])  # index + n: image 7 mirrored
    np.testing.assert_array_equal(facedata.to_uint8(mirrored)[0], stored[7][:, ::-1])
    mixed = facedata.to_uint8(dataset.get_batch([9 + len(dataset), 5, 2 + len(dataset), 4]))
    np.testing.assert_array_equal(mixed, np.stack([stored[4], stored[5], stored[2][:, ::-1], stored[9][:, ::-1]]))


def test_sampler_is_a_function_of_seed_and_epoch():
    s = dataReader.EpochBatchSampler(10, 4, epoch_images=25, flip=True, seed=3)
    first = list(s)
    assert [len(b) for b in first] == [4] * 6  # 25 images -> 6 full batches of 4
    assert list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    order = dataReader.EpochBatchSampler(10, 4, epoch_images=25, flip=True, seed=3).epoch_order()
    assert sorted(order[:10] % 10) == list(range(10))  # each pass shows every image once
    assert 0 < (order >= 10).mean() < 1  # some mirrored, some not
    assert len(dataReader.EpochBatchSampler(10, 4)) == 2  # the last partial batch is dropped


def test_missing_and_incomplete_datasets_are_refused(tmp_path, lfw32):
    with pytest.raises(facedata.DatasetError, match="pretreat.py"):
        facedata.FaceDataset(str(tmp_path / "none"))
    build_dataset(tmp_path / "d", size=8)
    os.remove(tmp_path / "d" / "manifest.json")
    with pytest.raises(facedata.DatasetError, match="incomplete"):
        facedata.FaceDataset(str(tmp_path / "d"))


def test_array_that_disagrees_with_its_manifest_is_refused(tmp_path):
    build_dataset(tmp_path, size=8)
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["count"] = 101
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(facedata.DatasetError, match="promises"):
        facedata.FaceDataset(str(tmp_path))


def test_make_grid_layout():
    images = np.zeros((5, 4, 4, 3), np.uint8) + np.arange(1, 6, dtype=np.uint8)[:, None, None, None]
    grid = facedata.make_grid(images, ncols=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert grid[1, 1, 0] == 1 and grid[1, 6, 0] == 2 and grid[6, 1, 0] == 4
    assert grid[6, 11, 0] == 255  # the empty sixth cell stays the fill colour


def test_reader_preview_writes_a_png(lfw32, tmp_path):
    out = tmp_path / "preview.png"
    result = run_script("dataReader.py", "--data", lfw32, "--out", out, "--num", 16)
    assert result.returncode == 0, result.stderr
    import cv2
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * (4 * 34 + 2), 2 * (4 * 34 + 2), 3)  # 4 x 4 faces of 32 px, 2 px apart, shown 2x


def test_dataset_pickles_as_its_path_and_loads_with_workers(lfw32):
    import pickle
    dataset = facedata.FaceDataset(lfw32)
    blob = pickle.dumps(dataset)
    assert len(blob) < 10_000  # not the 300 KB array
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.get_batch([4, 2]), dataset.get_batch([4, 2]))
    single = [b.numpy() for b in dataReader.make_loader(dataset, 10, seed=1)]
    workers = [b.numpy() for b in dataReader.make_loader(dataset, 10, seed=1, num_workers=2)]
    assert len(workers) == len(single) == 10
    np.testing.assert_array_equal(np.stack(workers), np.stack(single))


@pytest.mark.parametrize("size", [16, 8])
def test_downsampled_reads_equal_area_averages(lfw32, size):
    from skimage.measure import block_reduce
    stored = np.load(os.path.join(lfw32, "images.npy")).astype(np.float64)
    dataset = facedata.FaceDataset(lfw32, size=size)
    f = 32 // size
    got = dataset.get_batch([1 + len(dataset), 3])  # image 1 mirrored, and image 3: plain ones first
    expected = block_reduce(stored[[3, 1]], (1, f, f, 1), np.mean)
    expected[1] = expected[1][:, ::-1]
    np.testing.assert_allclose(got, expected.transpose(0, 3, 1, 2) / 127.5 - 1, atol=1e-5)
    assert got.shape == (2, 3, size, size) and got.dtype == np.float32


def test_sizes_that_do_not_divide_the_stored_size_are_refused(lfw32):
    for size in (12, 64):
        with pytest.raises(facedata.DatasetError, match="divides 32"):
            facedata.FaceDataset(lfw32, size=size)


def test_uint8_reads_keep_order_and_round_block_means(lfw32):
    stored = np.load(os.path.join(lfw32, "images.npy"))
    np.testing.assert_array_equal(facedata.FaceDataset(lfw32).get_uint8([5, 2]), stored[[5, 2]])
    small = facedata.FaceDataset(lfw32, size=16).get_uint8([5])
    expected = stored[5].astype(np.float64).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    assert np.abs(small[0].astype(int) - expected).max() <= 0.5 + 1e-6


def test_the_arrays_path_names_its_dataset_and_other_files_are_refused(lfw32, tmp_path):
    for path in (os.path.join(lfw32, "images.npy"), os.path.join(lfw32, "manifest.json")):
        dataset = facedata.FaceDataset(path)
        assert dataset.folder == lfw32 and len(dataset) == 100
    (tmp_path / "faces.npy").write_bytes(b"x")
    with pytest.raises(facedata.DatasetError, match="--data takes the dataset folder"):
        facedata.FaceDataset(str(tmp_path / "faces.npy"))
