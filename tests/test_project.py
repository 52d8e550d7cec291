"""project.py: photos into a trained generator's latent space, its files, determinism, and refusals."""
import os

import cv2
import numpy as np
import paddle
import pytest

import generator
import project
import train
from facedata import grid_scale, make_grid
from conftest import assert_user_error, celeba_like, run_script, write_jpegs

RUNS = {  # a few iterations at 8x8 of each architecture project.py serves
    "dcgan": dict(width=8, batch_size=16),
    "pggan": dict(fmap_base=32, fmap_max=16, z_dim=16, batch_sizes="4:16,8:16", phase_kimg=0.032, epochs=3),
    "vae": dict(width=8, batch_size=16),
    "vaegan": dict(width=8, batch_size=16),
}


@pytest.fixture(scope="module")
def checkpoints(lfw8, tmp_path_factory):
    out = {}
    for arch, options in RUNS.items():
        options = dict(dict(epochs=2, epoch_images=32, device="cpu"), **options)
        folder = tmp_path_factory.mktemp(arch)
        out[arch] = train.train(train.TrainConfig(data=lfw8, out=str(folder), arch=arch, **options))
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_jpegs(str(folder), celeba_like(3))
    return [str(folder / f"{i:06d}.jpg") for i in (1, 2, 3)]


@pytest.mark.parametrize("arch", list(RUNS))
def test_writes_each_photos_target_projection_and_latent_and_a_comparison(arch, checkpoints, photos, tmp_path):
    project.main([*photos[:2], "--checkpoint", checkpoints[arch], "--out", str(tmp_path), "--steps", "20",
                  "--candidates", "8"])
    assert sorted(os.listdir(tmp_path)) == ["000001.npy", "000001_projected.png", "000001_target.png", "000002.npy",
                                            "000002_projected.png", "000002_target.png", "compare.png"]
    G, _ = generator.load_generator(checkpoints[arch])
    z = np.load(tmp_path / "000001.npy")
    assert z.shape == (G.args["z_dim"],) and z.dtype == np.float32
    projected = cv2.imread(str(tmp_path / "000001_projected.png"))[..., ::-1]
    np.testing.assert_array_equal(projected, generator.draw(G, z[None])[0])   # the latent draws that face
    target = cv2.imread(str(tmp_path / "000001_target.png"))[..., ::-1]
    np.testing.assert_array_equal(target, project.read_photo(photos[0], 8, "center"))   # as pretreat.py makes it
    compare = cv2.imread(str(tmp_path / "compare.png"))[..., ::-1]   # targets above projections, 2 x 2
    scale = grid_scale(8)
    np.testing.assert_array_equal(compare[::scale, ::scale], make_grid(np.stack([target, *[
        cv2.imread(str(tmp_path / n))[..., ::-1] for n in ("000002_target.png", "000001_projected.png",
                                                          "000002_projected.png")]]), ncols=2))


def test_the_same_seed_projects_to_the_same_latent_and_steps_lower_the_error(checkpoints, photos, tmp_path):
    G, state = generator.load_generator(checkpoints["dcgan"])
    photo = project.read_photo(photos[0], 8, "center")
    z0, _, first, last = project.project(G, None, photo, steps=60, lr=0.05, candidates=8, seed=3)
    z1, _, _, _ = project.project(G, None, photo, steps=60, lr=0.05, candidates=8, seed=3)
    np.testing.assert_array_equal(z0, z1)
    assert last < first
    target = paddle.to_tensor(generator.to_float(photo[None]))
    start = project.start_latent(G, None, target, 8, np.random.default_rng(3))
    losses = [float(project.pyramid_loss(G(paddle.to_tensor(z)), target)) for z in (start, z0)]
    assert losses[1] < losses[0]


def test_an_encoder_starts_from_its_mean(checkpoints, photos):
    G, state = generator.load_generator(checkpoints["vae"])
    E = generator.load_encoder(checkpoints["vae"], state)
    photo = project.read_photo(photos[0], 8, "center")
    z, _, _, _ = project.project(G, E, photo, steps=0, lr=0.05, candidates=8, seed=0)
    with paddle.no_grad():
        mean = E(paddle.to_tensor(generator.to_float(photo[None])))[0].numpy()
    np.testing.assert_array_equal(z, mean)


def test_bad_photos_are_refused_in_one_line(checkpoints, photos, tmp_path):
    (tmp_path / "notes.txt").write_text("not a photo")
    os.makedirs(tmp_path / "other", exist_ok=True)
    copy = str(tmp_path / "other" / "000001.jpg")
    open(copy, "wb").write(open(photos[0], "rb").read())
    for args, phrase in (([str(tmp_path / "notes.txt")], "notes.txt: not a readable image"),
                         ([str(tmp_path / "none.jpg")], "cannot read"),
                         ([photos[0], copy], "two photos share a name (000001)"),
                         ([], "the following arguments are required: PHOTO")):
        result = run_script("project.py", *args, "--checkpoint", checkpoints["dcgan"], "--out", tmp_path / "p",
                            cwd=tmp_path)
        assert_user_error(result, phrase)
        assert not (tmp_path / "p").exists()
