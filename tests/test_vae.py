"""--arch vae: the Torch blog's variational autoencoder, its KL term, and a trained one reconstructing faces."""
import re

import numpy as np
import paddle
import pytest

import checkpoint
import facedata
import generator
import methods
import network
import train


@pytest.mark.parametrize("mean, logvar, positive", [
    (0.0, 0.0, False),    # the prior itself: KL 0
    (1.0, 0.0, True),     # moved
    (0.0, 1.0, True),     # wider
    (0.0, -1.0, True),    # narrower
    (-0.5, 0.3, True),
])
def test_kl_is_zero_for_the_prior_and_positive_otherwise(mean, logvar, positive):
    m, v = paddle.full([4, 10], mean), paddle.full([4, 10], logvar)
    kl = methods.kl_divergence(m, v).numpy()
    assert kl.shape == (4,)
    expected = 0.5 * 10 * (mean ** 2 + np.exp(logvar) - 1 - logvar)   # the closed form, per image
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-7)
    assert (kl > 1e-6).all() if positive else np.abs(kl).max() < 1e-7


@pytest.mark.parametrize("size", [8, 32, 64])
def test_encoder_and_decoder_shapes(size):
    nets = network.build("vae", size=size, z_dim=20, width=8)
    assert list(nets) == ["E", "G"] and isinstance(nets["G"], network.DCGANGenerator)
    mean, logvar = nets["E"](paddle.uniform([3, 3, size, size], min=-1, max=1))
    assert mean.shape == [3, 20] and logvar.shape == [3, 20]
    assert nets["G"](mean).shape == [3, 3, size, size]


def reconstruction(nets, faces):
    """Mean squared pixel error of the faces decoded from their encoded means (no sampling)."""
    nets["E"].eval()
    nets["G"].eval()
    with paddle.no_grad():
        mean, _ = nets["E"](paddle.to_tensor(faces))
        return float(((nets["G"](mean).numpy() - faces) ** 2).mean())


def test_a_trained_vae_reconstructs_faces_and_generates(lfw8, tmp_path):
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path / "run"), arch="vae", epochs=4, batch_size=32,
                            epoch_images=1600, width=8, z_dim=20, log_every=10, device="cpu")
    path = train.train(cfg)
    state = checkpoint.load(path)
    assert {"E", "G", "opt_E", "opt_G"} <= set(state) and state["sampler"]["net"] == "G"
    faces = facedata.FaceDataset(lfw8).get_batch(np.arange(100))
    paddle.seed(cfg.seed)
    untrained = network.build("vae", **state["arch_args"])
    trained = network.build("vae", **state["arch_args"])
    for name, net in trained.items():
        net.set_state_dict(state[name])
    after, before = reconstruction(trained, faces), reconstruction(untrained, faces)
    assert after < 0.7 * before, (after, before)  # 200 iterations: 0.5-0.6 of the untrained error
    G, state = generator.load_generator(path)  # faces from z ~ N(0, I) through the decoder
    assert generator.generate(G, 5, seed=0).shape == (5, 8, 8, 3)
    # --reconstruct's reconstructions resemble their own inputs: blurry after 200 iterations at 8x8, but
    # 85% are nearer their input than the average other face, mean rank 5.3 of 19 (chance: 9.5), seeds 0-1
    real = facedata.FaceDataset(lfw8).get_uint8(np.arange(20))
    rec = generator.reconstruct(generator.load_encoder(path, state), G, real).astype(float)
    distance = np.abs(rec[:, None] - real[None].astype(float)).mean(axis=(2, 3, 4))   # [reconstruction, input]
    own = np.diag(distance)
    assert (own < (distance.sum(axis=1) - own) / 19).mean() >= 0.7
    assert (distance < own[:, None]).sum(axis=1).mean() < 8


def test_gan_settings_are_refused_for_the_vae(lfw8, tmp_path):
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path), arch="vae", balance="margin", device="cpu")
    with pytest.raises(train.ConfigError, match="--balance does not apply to --arch vae"):
        train.train(cfg)


def test_reconstruct_writes_faces_beside_their_reconstructions_and_needs_an_encoder(lfw8, tmp_path, capsys):
    from conftest import assert_user_error, run_script
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path / "run"), arch="vae", epochs=1, batch_size=16,
                            epoch_images=32, width=8, z_dim=20, device="cpu")
    path = train.train(cfg)
    generator.main(["--checkpoint", path, "--reconstruct", "5", "--data", lfw8, "--out", str(tmp_path / "rec"),
                    "--seed", "0"])
    assert re.search(r"mean error \d+\.\d grey levels, \d+% nearer their own face than any other of the 5",
                     capsys.readouterr().err)
    import cv2
    grid = cv2.imread(str(tmp_path / "rec" / "reconstruct.png"))
    # 5 pairs, 3 per row: 2 rows of 6 faces of 8 px, 2 px apart, shown 8x
    assert grid.shape == (8 * (2 * 10 + 2), 8 * (6 * 10 + 2), 3)
    gan = train.train(train.TrainConfig(data=lfw8, out=str(tmp_path / "gan"), epochs=1, batch_size=16,
                                        epoch_images=16, width=8, device="cpu"))
    result = run_script("generator.py", "--checkpoint", gan, "--reconstruct", 4, "--data", lfw8,
                        "--out", tmp_path / "no", cwd=tmp_path)
    assert_user_error(result, "has no encoder to reconstruct with", "needs an autoencoder (--arch vae or vaegan)")
    assert not (tmp_path / "no").exists()
