"""evaluate.py: SWD, the Laplacian pyramid, MS-SSIM diversity and the memorization check."""
import json
import os

import cv2
import numpy as np
import pytest

import metrics
import train
from conftest import assert_user_error, run_script


@pytest.fixture(scope="module")
def faces(lfw32):
    return np.load(os.path.join(lfw32, "images.npy"))


def noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_swd_of_a_set_and_itself_is_zero_and_of_noise_large(faces):
    same_levels, same = metrics.swd(faces[:50], faces[:50])
    _, other_half = metrics.swd(faces[:50], faces[50:])
    _, vs_noise = metrics.swd(faces[:50], noise(faces[:50].shape))
    assert list(same_levels) == [32, 16]
    assert same == 0
    assert 0 < other_half < vs_noise / 3  # two halves of real faces are close; noise is far


def test_swd_is_symmetric(faces):
    a, b = faces[:40], np.ascontiguousarray(faces[40:80, :, ::-1])
    assert metrics.swd(a, b, seed=3) == metrics.swd(b, a, seed=3)


def test_swd_levels_go_down_to_16():
    assert metrics.swd_levels(64) == [64, 32, 16]
    assert metrics.swd_levels(128) == [128, 64, 32, 16]
    assert metrics.swd_levels(8) == [8]


def test_laplacian_pyramid_reconstructs_its_input(faces):
    x = faces[:4].transpose(0, 3, 1, 2).astype(np.float32)
    pyramid = metrics.laplacian_pyramid(x, 3)
    assert [p.shape[2] for p in pyramid] == [32, 16, 8]
    np.testing.assert_allclose(metrics.reconstruct(pyramid), x, atol=1e-3)
    # The band-pass levels hold detail only: their mean is near 0, unlike the images'.
    assert abs(pyramid[0].mean()) < 2 and x.mean() > 50


def test_pyr_down_matches_opencv(faces):
    import cv2
    x = faces[:1].astype(np.float32)
    ours = metrics.pyr_down(x.transpose(0, 3, 1, 2))[0].transpose(1, 2, 0)
    np.testing.assert_allclose(ours, cv2.pyrDown(x[0]), atol=1e-3)


def test_ms_ssim_of_identical_pairs_is_one_and_falls_with_difference(faces):
    assert metrics.ms_ssim(faces[:6], faces[:6]) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ms_ssim(faces[:6], faces[6:12]) < 0.6
    assert metrics.ms_ssim(faces[:6], noise(faces[:6].shape)) < 0.1


def test_diversity_of_one_repeated_face_is_one(faces):
    assert metrics.diversity(np.repeat(faces[:1], 8, axis=0)) == pytest.approx(1.0, abs=1e-6)
    assert metrics.diversity(faces[:40]) < 0.5


def test_memorization_flags_copies_and_not_noise(faces):
    train_set = faces[:80]
    copies = np.concatenate([faces[:5], faces[5:10, :, ::-1]])  # plain and mirrored copies
    result = metrics.memorization(copies, train_set)
    assert result["copies"] == 10 and result["fraction"] == 1.0
    assert metrics.memorization(noise((10, 32, 32, 3)), train_set)["copies"] == 0
    assert metrics.memorization(faces[80:100], train_set)["copies"] == 0  # other real faces are no copies


def test_nearest_distances_skip_self():
    x = np.float32([[0, 0], [3, 4], [6, 8]])
    np.testing.assert_allclose(metrics.nearest_distances(x, x), [0, 0, 0])
    np.testing.assert_allclose(metrics.nearest_distances(x, x, skip=np.arange(3), chunk=2), [5, 5, 5])


def test_cli_scores_a_trained_checkpoint_below_its_untrained_network(lfw8, tmp_path):
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path), epochs=2, batch_size=32, epoch_images=3200, width=32,
                            flip=True, device="cpu")
    checkpoint = train.train(cfg)
    result = run_script("evaluate.py", "--checkpoint", checkpoint, "--data", lfw8, "--num", 40, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SWD avg" in result.stdout and "real (floor)" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = metrics["results"]
    assert metrics["images_per_set"] == 40 and metrics["size"] == 8
    assert rows["trained"]["swd_x1e3"] < rows["untrained"]["swd_x1e3"]
    assert rows["trained"]["ms_ssim"] < rows["untrained"]["ms_ssim"]
    assert not (tmp_path / "nearest.png").exists()
    result = run_script("evaluate.py", "--checkpoint", checkpoint, "--data", lfw8, "--num", 40, "--nearest", 10,
                        "--out", tmp_path / "again" / "m.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    grid = cv2.imread(str(tmp_path / "again" / "nearest.png"))
    # 10 faces of 8 px, 8 to a strip: 2 strips of 2 rows (faces, their nearest), 8 columns; cells of 10 px, x8
    assert grid.shape == ((4 * 10 + 2) * 8, (8 * 10 + 2) * 8, 3)


def test_nearest_faces_finds_training_faces_and_their_mirrors(faces):
    fakes = np.concatenate([faces[3:5], faces[7:8, :, ::-1], np.clip(faces[9:10].astype(int) + 3, 0, 255)])
    near = metrics.nearest_faces(fakes.astype(np.uint8), faces[:50], chunk=16)
    np.testing.assert_array_equal(near[:3], fakes[:3])                # itself, as shown (mirrored where it is)
    np.testing.assert_array_equal(near[3], faces[9])                   # a brighter copy: the face it copies


def test_train_records_swd_when_asked(lfw8, tmp_path):
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path), epochs=1, batch_size=16, epoch_images=64, width=8,
                            eval_every=2, device="cpu")
    train.train(cfg)
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    evals = [r for r in records if "swd_x1e3" in r]
    assert [r["iteration"] for r in evals] == [2, 4]
    assert all(r["swd_x1e3"] > 0 and list(r["swd_x1e3_per_size"]) == ["8"] for r in evals)
    assert (tmp_path / "swd.png").exists()


def test_no_checkpoint_is_a_clear_error(tmp_path):
    assert_user_error(run_script("evaluate.py", "--checkpoint", tmp_path / "none.pdparams", cwd=tmp_path),
                      "train.py")


def test_ms_ssim_on_images_smaller_than_five_scales(faces):
    small = faces[:4, ::4, ::4]  # 8x8: four scales
    assert metrics.ms_ssim(small, small) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ms_ssim(small[:2], small[2:]) < 1


def test_memorization_reads_the_training_set_in_chunks(faces):
    fakes = np.concatenate([faces[:3], noise((5, 32, 32, 3))])
    whole = metrics.memorization(fakes, faces[:90], chunk=4096)
    assert metrics.memorization(fakes, faces[:90], chunk=7) == pytest.approx(whole)
    assert whole["copies"] == 3
