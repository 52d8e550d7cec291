"""--arch pggan: equalized LR, pixel norm, minibatch stddev, fades without jumps, the schedule, WGAN-GP."""
import os

import numpy as np
import paddle
import pytest

import checkpoint
import generator
import methods
import network
import progressive
import train
from conftest import sigint_after

SMALL = dict(size=16, z_dim=32, fmap_base=32, fmap_max=16)


def nets(seed=0):
    paddle.seed(seed)
    return network.build("pggan", **SMALL).values()


@pytest.mark.parametrize("res", [4, 8, 16])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_shapes_at_every_resolution_and_alpha(res, alpha):
    G, D = nets()
    G.set_stage(res, alpha)
    D.set_stage(res, alpha)
    faces = G(paddle.randn([8, 32]))
    assert faces.shape == [8, 3, res, res]
    assert D(faces).shape == [8]


@pytest.mark.parametrize("res", [8, 16])
def test_a_fade_starts_and_ends_without_a_jump(res):
    G, D = nets()
    z = paddle.randn([8, 32])
    G.set_stage(res // 2, 1.0)
    before = G(z).numpy()
    G.set_stage(res, 0.0)  # the fade's first step draws what the previous resolution drew, upsampled
    np.testing.assert_allclose(G(z).numpy(), before.repeat(2, axis=2).repeat(2, axis=3), rtol=1e-5, atol=1e-6)
    G.set_stage(res, 1.0)
    stable = G(z).numpy()
    G.set_stage(res, 1.0 - 1e-7)  # the fade's last step draws what the stabilised network draws
    np.testing.assert_allclose(G(z).numpy(), stable, rtol=1e-5, atol=1e-5)

    x = paddle.uniform([8, 3, res, res], min=-1, max=1)
    D.set_stage(res, 1.0)
    stable_d = D(x).numpy()
    D.set_stage(res, 1.0 - 1e-7)
    np.testing.assert_allclose(D(x).numpy(), stable_d, rtol=1e-4, atol=1e-5)
    D.set_stage(res, 0.0)  # D's input side at the fade's start: the previous D on the average-pooled image
    at_start = D(x).numpy()
    D.set_stage(res // 2, 1.0)
    np.testing.assert_allclose(at_start, D(progressive.real_at(x, res // 2, 1.0)).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("images, expected", [
    (0, (4, 1.0, 0)), (99, (4, 1.0, 0)),
    (100, (8, 0.0, 1)), (150, (8, 0.5, 1)), (200, (8, 1.0, 2)), (299, (8, 1.0, 2)),
    (300, (16, 0.0, 3)), (375, (16, 0.75, 3)), (400, (16, 1.0, 4)),
    (500, (32, 0.0, 5)), (550, (32, 0.5, 5)), (600, (32, 1.0, 6)), (10_000, (32, 1.0, 6)),
])
def test_schedule(images, expected):
    assert progressive.stage(images, 100, 32) == expected


class Linear(paddle.nn.Layer):
    """D(x) = <w, x>: its gradient is w everywhere, so it is ||w||-Lipschitz along any line."""

    def __init__(self, w):
        super().__init__()
        self.w = paddle.to_tensor(w)

    def forward(self, x):
        return (x.reshape([x.shape[0], -1]) * self.w).sum(axis=1)


def test_gradient_penalty_is_zero_for_a_1_lipschitz_D_and_grows_otherwise():
    w = np.random.default_rng(0).standard_normal(3 * 8 * 8).astype(np.float32)
    w /= np.linalg.norm(w)
    real, fake = paddle.uniform([6, 3, 8, 8], min=-1, max=1), paddle.uniform([6, 3, 8, 8], min=-1, max=1)
    u = paddle.rand([6, 1, 1, 1])
    assert float(progressive.gradient_penalty(Linear(w), real, fake, u)) == pytest.approx(0.0, abs=1e-6)
    assert float(progressive.gradient_penalty(Linear(2 * w), real, fake, u)) == pytest.approx(10.0, rel=1e-4)


def test_equalized_layers_have_unit_weights_and_scale_at_run_time():
    paddle.seed(0)
    conv = network.EqualizedConv2D(64, 128, kernel=3)
    assert float(conv.weight.std()) == pytest.approx(1.0, abs=0.02) and abs(float(conv.weight.mean())) < 0.02
    assert conv.scale == pytest.approx(2 ** 0.5 / (64 * 9) ** 0.5)
    x = paddle.randn([2, 64, 5, 5])
    expected = paddle.nn.functional.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1)
    np.testing.assert_allclose(conv(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    dense = network.EqualizedLinear(256, 10, gain=1.0)
    assert dense.scale == pytest.approx(1 / 16) and float(dense.weight.std()) == pytest.approx(1.0, abs=0.05)
    to_rgb = network.PGGANGenerator(**SMALL).to_rgb["16"]
    assert to_rgb.scale == pytest.approx(1.0 / to_rgb.weight.shape[1] ** 0.5)  # gain 1 for to-RGB


def test_pixel_norm_gives_unit_rms_per_pixel():
    y = network.pixel_norm(paddle.randn([3, 16, 4, 4]) * 7).numpy()
    np.testing.assert_allclose(np.sqrt((y ** 2).mean(axis=1)), 1.0, rtol=1e-4)


def test_minibatch_stddev_adds_the_group_std_as_one_channel():
    x = np.random.default_rng(1).standard_normal((8, 3, 2, 2)).astype(np.float32)
    y = network.minibatch_stddev(paddle.to_tensor(x), group=4).numpy()
    assert y.shape == (8, 4, 2, 2)
    np.testing.assert_array_equal(y[:, :3], x)
    for m in range(2):  # groups of 4: images m, m + 2, m + 4, m + 6
        members = x[m::2]
        expected = np.sqrt(members.var(axis=0) + 1e-8).mean()
        np.testing.assert_allclose(y[m::2, 3], expected, rtol=1e-5)


def test_moving_average():
    G, _ = nets(0)
    G_ema, _ = nets(1)
    before = [p.numpy().copy() for p in G_ema.parameters()]
    methods.ema_update(G_ema, G, beta=0.9)
    for b, e, p in zip(before, G_ema.parameters(), G.parameters()):
        np.testing.assert_allclose(e.numpy(), 0.9 * b + 0.1 * p.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("updates, expected", [(0, 0.1), (8, 0.5), (90, 0.91), (10_000, 0.999)])
def test_moving_average_warms_up(updates, expected):
    assert methods.ema_beta(updates) == pytest.approx(expected)


def test_batch_size_table():
    table = progressive.parse_batch_sizes("4:64,8:32,32:8")
    assert [progressive.batch_size(table, r) for r in (4, 8, 16, 32, 64)] == [64, 32, 32, 8, 8]
    for bad in ("4-64", "3:8", "8:0", "x:1"):
        with pytest.raises(ValueError):
            progressive.parse_batch_sizes(bad)


def tiny(data, out, **over):
    options = dict(data=data, out=str(out), arch="pggan", size=8, epochs=4, epoch_images=64, phase_kimg=0.064,
                   batch_sizes="4:16,8:8", z_dim=32, fmap_base=32, fmap_max=16, log_every=1, sample_every=100,
                   device="cpu")
    options.update(over)
    return train.TrainConfig(**options)


def test_pggan_grows_samples_at_each_resolution_resumes_mid_fade_and_generates(lfw8, tmp_path, monkeypatch):
    # 64 images per phase and per epoch: epoch 1 at 4x4 (4 batches of 16), epoch 2 fades 8x8 in
    # (8 batches of 8), epochs 3-4 stabilise at 8x8.
    whole = checkpoint.load(train.train(tiny(lfw8, tmp_path / "whole", keep=20)))
    assert whole["method"]["stage"] == {"res": 8, "alpha": 1.0, "phase": 2}
    assert whole["iteration"] == 4 + 8 + 8 + 8 and "G_ema" in whole
    samples = sorted(os.listdir(tmp_path / "whole" / "samples"))
    assert samples[0].endswith("_4px.png") and samples[-1].endswith("_8px.png")

    interrupt_after = sigint_after(8)  # mid-fade: after 4 iterations at 4x4 and 4 of the fade's 8

    with monkeypatch.context() as m:
        m.setattr(progressive.ProgressiveMethod, "step", interrupt_after(progressive.ProgressiveMethod.step))
        mid = checkpoint.load(train.train(tiny(lfw8, tmp_path / "parts")))
    assert mid["method"]["stage"] == {"res": 8, "alpha": 0.5, "phase": 1} and mid["iteration"] == 8
    resumed = checkpoint.load(train.train(tiny(lfw8, tmp_path / "parts")))
    for part in ("G", "G_ema", "D"):
        for k, v in whole[part].items():
            np.testing.assert_array_equal(resumed[part][k], v, err_msg=(part, k))

    generator.main(["--checkpoint", str(tmp_path / "whole" / checkpoint.FILE), "--out", str(tmp_path / "final"),
                    "--num", "3", "--seed", "0"])
    early = tmp_path / "whole" / checkpoint.snapshot_name(4)  # after the 4x4 phase: 8x8 fading in from alpha 0
    assert checkpoint.load(str(early))["method"]["stage"] == {"res": 8, "alpha": 0.0, "phase": 1}
    generator.main(["--checkpoint", str(early), "--out", str(tmp_path / "early"), "--num", "3", "--seed", "0"])
    import cv2
    for folder, source in (("final", tmp_path / "whole" / checkpoint.FILE), ("early", early)):
        # Paddle Inference (the CPU default, "final" and "early" above) against eager mode, stabilised and fading
        generator.main(["--checkpoint", str(source), "--out", str(tmp_path / f"{folder}_eager"), "--num", "3",
                        "--seed", "0", "--engine", "dygraph"])
        for i in range(3):
            a, b = (cv2.imread(str(tmp_path / f / f"{i:04d}.png")).astype(int) for f in (folder, f"{folder}_eager"))
            assert np.abs(a - b).max() <= 1, (folder, i)
    assert os.path.isdir(tmp_path / "whole" / generator.EXPORT_DIR)
    # a checkpoint as written before issue 12 (no "sampler": G_ema and the method's stage say it), during 4x4
    mid4 = {k: v for k, v in whole.items() if k != "sampler"}
    mid4["method"] = {"stage": {"res": 4, "alpha": 1.0, "phase": 0}}
    paddle.save(mid4, str(tmp_path / "mid4.pdparams"))
    generator.main(["--checkpoint", str(tmp_path / "mid4.pdparams"), "--out", str(tmp_path / "mid4"),
                    "--num", "2", "--seed", "0"])
    small = cv2.imread(str(tmp_path / "mid4" / "0000.png"))
    assert small.shape == (8, 8, 3)  # drawn at 4x4, shown at the final 8x8
    np.testing.assert_array_equal(small, small[::2, ::2].repeat(2, axis=0).repeat(2, axis=1))
    for folder in ("final", "early"):
        assert cv2.imread(str(tmp_path / folder / "0000.png")).shape == (8, 8, 3)
    face = cv2.imread(str(tmp_path / "early" / "0001.png"))
    np.testing.assert_array_equal(face[0::2, 0::2], face[1::2, 1::2])  # 2x2 blocks: the 4x4 face, upsampled


@pytest.mark.parametrize("over, phrase", [
    (dict(width=16), "--width does not apply to --arch pggan"),
    (dict(balance="margin"), "--balance does not apply to --arch pggan"),
    (dict(g_steps=2), "--g-steps does not apply to --arch pggan: only to --arch dcgan and torchblog"),
    (dict(batch_sizes="4:6"), "multiple of 4"),
])
def test_settings_that_do_not_apply_are_refused(over, phrase, lfw8, tmp_path):
    with pytest.raises(train.ConfigError, match=phrase):
        train.train(tiny(lfw8, tmp_path, **over))


def test_pggan_settings_are_refused_for_dcgan(lfw8, tmp_path):
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path), width=8, phase_kimg=1.0, device="cpu")
    with pytest.raises(train.ConfigError, match="--phase-kimg does not apply to --arch dcgan"):
        train.train(cfg)


def test_fmap_base_means_the_official_code_and_the_paper_sizes_match_its_parameter_counts():
    # Karras et al. 2018, Table 2: G and D of 23.1M parameters each at 1024x1024 (fmap_base 8192, fmap_max 512)
    G, D = network.build("pggan", size=1024, z_dim=512, fmap_base=8192, fmap_max=512).values()
    assert list(G.nf.values()) == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert network.count_parameters(G) == pytest.approx(23.1e6, abs=0.05e6)
    assert network.count_parameters(D) == pytest.approx(23.1e6, abs=0.05e6)


@pytest.mark.parametrize("size, millions, printed", [
    (4, 6.56, 0.01), (8, 11.2, 0.1), (16, 13.05, 0.01), (32, 13.49, 0.01), (64, 13.59, 0.03), (128, 13.62, 0.03)])
def test_the_pggan_articles_table_is_fmap_base_2048(size, millions, printed):
    # The PG-GAN article's G sizes per resolution: 512, 512, 256, 128, 64, 32 channels, which is
    # the official formula at fmap_base 2048. Its 64 and 128 px figures are 0.02M below ours.
    G = network.build_net("pggan", "G", dict(size=size, z_dim=512, fmap_base=2048, fmap_max=512))
    assert network.count_parameters(G) == pytest.approx(millions * 1e6, abs=printed * 1e6)


def test_a_checkpoint_from_before_the_official_meaning_is_read_with_its_networks(lfw8, tmp_path):
    state = checkpoint.load(train.train(tiny(lfw8, tmp_path / "run", epochs=1)))
    old = dict(state, version="0.4.0", arch_args={**state["arch_args"], "fmap_base": 64},
               config={**state["config"], "fmap_base": 64})
    paddle.save(old, str(tmp_path / "old.pdparams"))
    G, read = generator.load_generator(str(tmp_path / "old.pdparams"))
    assert read["arch_args"]["fmap_base"] == 32 and list(G.nf.values()) == [16, 8]
