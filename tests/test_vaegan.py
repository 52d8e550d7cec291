"""--arch vaegan: Larsen et al.'s VAE/GAN, each network trained by its own loss, and the equilibrium rule."""
import json
from dataclasses import replace

import numpy as np
import paddle
import pytest

import checkpoint
import facedata
import generator
import methods
import network
import train
from balance import equilibrium_rule
from control import Processes
from conftest import assert_user_error, run_script


@pytest.mark.parametrize("err_real, err_fake, expected", [
    (0.69, 0.69, (True, True)),     # at the equilibrium: both learn
    (0.34, 1.03, (True, True)),     # just inside the band (0.33, 1.03) on both sides
    (0.32, 0.69, (False, True)),    # D too good on reals: D waits
    (0.69, 0.30, (False, True)),    # D too good on fakes: D waits
    (1.04, 0.69, (True, False)),    # D lost on reals: G waits
    (0.69, 1.50, (True, False)),    # D lost on fakes: G waits
    (0.20, 1.20, (True, True)),     # both would wait: both learn
])
def test_the_equilibrium_rule(err_real, err_fake, expected):
    assert equilibrium_rule(err_real, err_fake, margin=0.35) == expected


def test_features_are_the_last_conv_of_ds_body_before_its_batchnorm():
    for size, convs, channels in ((32, 3, 4 * 8), (64, 4, 8 * 8)):   # the reference's 3rd at 32 px, 4th at 64
        D = network.build("vaegan", size=size, z_dim=10, width=8)["D"]
        x = paddle.uniform([2, 3, size, size], min=-1, max=1)
        blocks = list(D.main)[:-1]
        assert len(blocks) == convs
        expected = blocks[-1].conv(paddle.nn.Sequential(*blocks[:-1])(x))
        features = D.features(x)
        assert features.shape == [2, channels, 4, 4]
        np.testing.assert_array_equal(features.numpy(), expected.numpy())
        assert not np.allclose(features.numpy(), blocks[-1].norm(expected).numpy())   # before the BatchNorm


def test_scale_gradient_keeps_the_value_and_scales_the_gradient():
    x = paddle.to_tensor([1.0, -2.0, 3.0], stop_gradient=False)
    y = methods.scale_gradient(x * x, -2.0)
    np.testing.assert_array_equal(y.numpy(), [1.0, 4.0, 9.0])
    (g,) = paddle.grad(y.sum(), x)
    np.testing.assert_allclose(g.numpy(), -2.0 * 2 * x.numpy())


def vaegan_method(**settings):
    """The eager step, whose gradients these tests take apart (tests/test_faststep.py holds the static one to it)."""
    cfg = train.TrainConfig(arch="vaegan", width=4, z_dim=8, batch_size=6, step="dygraph", **settings)
    cfg = replace(train.resolve_defaults(cfg, {"embedded": True, "count": 100}, 1), size=16)
    paddle.seed(0)
    method = methods.VAEGANMethod(cfg, "vaegan", 16, Processes())
    method.start(train.Position(), "cpu")
    return method


def faces(n=6, size=16, seed=0):
    return paddle.to_tensor(np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype("float32"))


def trained(net):
    return [p for p in net.parameters() if not p.stop_gradient]   # not BatchNorm's running statistics


def captured_gradients(method, real):
    """{network: [gradient per parameter]} that one step hands the optimizers (which then do not step)."""
    grads = {}
    for name, opt in method.opts.items():
        opt.step = lambda name=name: grads.setdefault(name, [p.grad.numpy().copy() for p in trained(method.nets[name])])
    paddle.seed(1)
    method.step(real, train.Position())
    return grads


def test_each_network_gets_the_gradient_of_its_own_loss():
    """E: KL + L_llike (no GAN term reaches it); G: gamma L_llike - L_GAN; D: L_GAN / 2, 0.5 BCE on reals + 0.5 on
    fakes. L_GAN's reals' term reaches G through D's BatchNorm, reals and fakes being one batch."""
    method = vaegan_method(gamma=0.3, balance="none")
    real = faces()
    grads = captured_gradients(method, real)
    E, G, D = (method.nets[k] for k in ("E", "G", "D"))
    paddle.seed(1)   # the same draws, in the same order, as the step
    mean, logvar = E(real)
    z = mean + paddle.exp(0.5 * logvar) * paddle.randn(mean.shape)
    kl = methods.kl_divergence(mean, logvar).mean()
    llike = methods.feature_error(D, G(z), real)
    logits = D(paddle.concat([real, G(paddle.randn([6, 8]))]))
    bce = paddle.nn.functional.binary_cross_entropy_with_logits
    err_real, err_fake = bce(logits[:6], paddle.ones([6])), bce(logits[6:], paddle.zeros([6]))

    def grad(loss, net):
        return [g.numpy() for g in paddle.grad(loss, trained(net), retain_graph=True)]

    expected = {"E": grad(kl + llike, E),
                "G": [0.3 * a - b for a, b in zip(grad(llike, G), grad(err_real + err_fake, G))],
                "D": grad(0.5 * err_real + 0.5 * err_fake, D)}
    for name in ("E", "G", "D"):
        for got, want in zip(grads[name], expected[name]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("skips, stepped", [((True, False), {"E", "G"}), ((False, True), {"E", "D"})])
def test_the_rule_skips_d_or_g_and_the_encoder_always_steps(skips, stepped):
    method = vaegan_method()
    method.tricks.skips = lambda err_real, err_fake: skips
    before = {name: [p.numpy().copy() for p in trained(net)] for name, net in method.nets.items()}
    method.step(faces(), train.Position())
    for name, net in method.nets.items():
        moved = any(not np.array_equal(a, p.numpy()) for a, p in zip(before[name], trained(net)))
        assert moved == (name in stepped), name


@pytest.mark.parametrize("flag, seen", [(False, 12), (True, 18)])
def test_d_reconstructions_adds_the_reconstructions_to_ds_fakes(flag, seen):
    method = vaegan_method(d_reconstructions=flag)
    sizes = []
    D = method.nets["D"]
    D.register_forward_pre_hook(lambda layer, inputs: sizes.append(inputs[0].shape[0]))
    method.step(faces(), train.Position())
    assert sizes == [seen]   # D's GAN forward: 6 reals + 6 prior samples (+ 6 reconstructions)


def test_a_trained_vaegan_reconstructs_faces_and_generates(lfw32, tmp_path):
    cfg = train.TrainConfig(data=lfw32, out=str(tmp_path / "run"), arch="vaegan", epochs=4, batch_size=32,
                            epoch_images=1600, width=8, z_dim=20, log_every=10, device="cpu")
    path = train.train(cfg)
    state = checkpoint.load(path)
    assert {"E", "G", "D", "opt_E", "opt_G", "opt_D"} <= set(state) and state["method"]["balance"] == "equilibrium"
    assert state["config"]["optimizer"] == "rmsprop" and state["config"]["margin"] == 0.35
    real = facedata.FaceDataset(lfw32).get_uint8(np.arange(20))
    G, state = generator.load_generator(path)
    E = generator.load_encoder(path, state)
    rec = generator.reconstruct(E, G, real).astype(float)
    untrained = network.build("vaegan", **state["arch_args"])
    for net in untrained.values():
        net.eval()
    before = generator.reconstruct(untrained["E"], untrained["G"], real).astype(float)
    error = lambda r: np.abs(r - real).mean()   # noqa: E731
    assert error(rec) < 0.85 * error(before), (error(rec), error(before))   # 0.81 after 200 iterations, seed 0
    distance = np.abs(rec[:, None] - real[None].astype(float)).mean(axis=(2, 3, 4))   # [reconstruction, input]
    own = np.diag(distance)
    assert (own < (distance.sum(axis=1) - own) / 19).mean() >= 0.7   # nearer its own input than the average other
    records = [r for r in map(json.loads, open(tmp_path / "run" / "log.jsonl")) if "llike" in r]
    assert {"kl", "llike", "err_R", "err_F", "d_skips", "g_skips"} <= set(records[-1])
    assert records[-1]["d_skips"] > 0   # the equilibrium rule held D back (129 of 200 times here)
    assert (tmp_path / "run" / "monitor.png").exists() and (tmp_path / "run" / "loss.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--arch", "vaegan", "--balance", "l2"], "--balance l2 is the Torch blog's rule for a plain GAN"),
    (["--arch", "dcgan", "--gamma", "0.1"], "--gamma does not apply to --arch dcgan: only to --arch vaegan"),
    (["--arch", "vae", "--d-reconstructions"], "--d-reconstructions does not apply to --arch vae"),
    (["--arch", "vaegan", "--gamma", "0"], "--gamma must be positive, got 0.0"),
])
def test_wrong_vaegan_settings_are_refused_with_one_line(lfw8, tmp_path, args, message):
    assert_user_error(run_script("train.py", "--data", lfw8, "--out", tmp_path, "--epochs", "1", *args), message)
