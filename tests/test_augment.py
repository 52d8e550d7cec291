"""augment.py, LeCam and G's moving average: what D sees, how p adapts, the regularisers' terms."""
import json
import os

import numpy as np
import paddle
import pytest

import augment
import checkpoint
import methods
import network
import train
from augment import AdaController, Augment, ada_adjust
from balance import LeCam, lecam_term
from conftest import assert_user_error, run_script


def faces(n=6, size=16, seed=0):
    paddle.seed(seed)
    return paddle.uniform([n, 3, size, size], min=-1, max=1)


def grey(n=6, size=16, seed=0):
    """Grey-as-RGB images, as the built-in faces are."""
    x = faces(n, size, seed)[:, :1]
    return paddle.concat([x, x, x], axis=1)


def diffaug_numbers(n, size, **overrides):
    """DiffAugment's numbers for the identity, with some of them replaced."""
    eye = np.repeat(np.eye(size, dtype=np.float32)[None], n, 0)
    ones = np.ones((n, 1, 1, 1), np.float32)
    numbers = {"brightness": 0 * ones, "saturation": ones, "contrast": ones, "rows": eye.repeat(3, axis=0), "cols": eye,
               "mask": np.ones((n, 1, size, size), np.float32)}
    return {k: paddle.to_tensor(v) for k, v in {**numbers, **overrides}.items()}


# ----------------------------------------------------------------------------- the ops

@pytest.mark.parametrize("kind, p", [("diffaug", 1.0), ("ada", 0.5), ("ada", 1.0)])
@pytest.mark.parametrize("size", [4, 16, 32])
def test_each_augmentation_keeps_shapes_and_the_range_and_changes_images(kind, p, size):
    x = faces(8, size)
    y = Augment(kind, p)(x)
    assert y.shape == x.shape
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    assert float((y - x).abs().mean()) > 0.01


@pytest.mark.parametrize("kind, p", [("none", 0.0), ("none", 1.0), ("ada", 0.0)])
def test_none_and_ada_at_p_0_are_the_identity(kind, p):
    x = faces(8, 32)
    np.testing.assert_allclose(Augment(kind, p)(x).numpy(), x.numpy(), atol=1e-5)


def test_translation_matches_the_references_gather_and_fills_with_0():
    """DiffAugment_pytorch.py's rand_translation: out[i, j] = x[i + dy, j + dx] of x padded with zeros."""
    x = faces(3, 8)
    moves = np.array([[1, -1], [-1, 0], [0, 1]])
    numbers = diffaug_numbers(3, 8, rows=augment.shift_matrices(moves[:, 0], 8).repeat(3, axis=0),
                              cols=augment.shift_matrices(moves[:, 1], 8).transpose(0, 2, 1))
    got = augment.diffaug_apply(x, numbers).numpy()
    padded = np.pad(x.numpy(), [(0, 0), (0, 0), (1, 1), (1, 1)])
    i = np.clip(np.arange(8)[None, :] + moves[:, :1] + 1, 0, 9)   # the reference's clamp into the padding
    j = np.clip(np.arange(8)[None, :] + moves[:, 1:] + 1, 0, 9)
    want = np.stack([padded[b][:, i[b]][:, :, j[b]] for b in range(3)])
    np.testing.assert_allclose(got, want, atol=1e-6)   # the identity colour ops round the last bit


def test_cutout_is_a_square_of_half_the_side_cut_at_the_edges():
    numbers = augment.diffaug_draw(200, 16)
    holes = 1 - numbers["mask"][:, 0]
    rows, cols = holes.max(axis=2).sum(axis=1), holes.max(axis=1).sum(axis=1)
    assert rows.max() == cols.max() == 8 and rows.min() >= 4 and cols.min() >= 4   # centres at the edges: half
    assert np.array_equal(holes.sum(axis=(1, 2)), rows * cols)                       # rectangles
    assert (np.abs(numbers["brightness"]) <= 0.5).all()
    assert ((numbers["contrast"] >= 0.5) & (numbers["contrast"] <= 1.5)).all()


def test_saturation_changes_nothing_on_grey_faces():
    x = grey(4, 8)
    numbers = diffaug_numbers(4, 8, saturation=np.full((4, 1, 1, 1), 1.9, np.float32))
    np.testing.assert_allclose(augment.diffaug_apply(x, numbers).numpy(), x.numpy(), atol=1e-6)


def test_ada_mirror_is_exact_and_each_transform_fires_with_p():
    x = faces(2, 8)
    theta = np.array([[[-1, 0, 0], [0, 1, 0]]] * 2, np.float32)
    numbers = {"theta": theta, "brightness": np.zeros((2, 1, 1, 1), np.float32),
               "contrast": np.ones((2, 1, 1, 1), np.float32)}
    got = augment.ada_apply(x, {k: paddle.to_tensor(v) for k, v in numbers.items()}).numpy()
    np.testing.assert_allclose(got, x.numpy()[..., ::-1], atol=1e-5)
    paddle.seed(0)
    drawn = augment.ada_draw(4000, 32, 0.25)
    moved = np.abs(drawn["brightness"][:, 0, 0, 0]) > 0
    assert moved.mean() == pytest.approx(0.25, abs=0.03)
    assert (np.abs(drawn["theta"] - [[1, 0, 0], [0, 1, 0]]).max(axis=(1, 2)) > 1e-7).mean() > 0.25  # 5 maps: more often


@pytest.mark.parametrize("kind, p", [("diffaug", 1.0), ("ada", 0.8)])
def test_gradients_flow_through_T_to_G(kind, p):
    paddle.seed(0)
    G, D = network.build("dcgan", size=16, width=8).values()
    T = Augment(kind, p)
    loss = D(T(G(paddle.randn([4, 100])))).mean()
    loss.backward()
    grads = [p_.grad for p_ in G.parameters() if not p_.stop_gradient]
    assert grads and all(g is not None for g in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads[:1])


def test_one_draw_per_image():
    x = paddle.concat([faces(1, 16)] * 8)   # the same face 8 times
    y = Augment("diffaug")(x).numpy()
    assert len({y[i].tobytes() for i in range(8)}) == 8


# ----------------------------------------------------------------------------- ADA's controller

@pytest.mark.parametrize("p, r_t, batch, expected", [
    (0.5, 0.9, 64, 0.5 + 64 * 4 / 500_000),     # D overfits: more augmentation
    (0.5, 0.2, 64, 0.5 - 64 * 4 / 500_000),     # D does not: less
    (0.0, 0.2, 64, 0.0),                        # clamped at 0
    (1.0, 1.0, 64, 1.0),                        # and at 1
    (0.3, 0.6, 64, 0.3),                        # at the target: unchanged
    (0.3, 0.7, 1000, 0.3 + 0.008),
])
def test_ada_controller_table(p, r_t, batch, expected):
    assert ada_adjust(p, r_t, batch) == pytest.approx(expected)


def test_ada_controller_moves_p_every_4_minibatches_and_round_trips():
    T = Augment("ada")
    control = AdaController(T)
    for _ in range(3):
        control.observe(1.0, 64)
    assert T.p == 0.0 and control.batches == 3
    control.observe(0.6, 64)                         # mean 0.9 > 0.6
    assert T.p == pytest.approx(64 * 4 / 500_000) and control.r_t == pytest.approx(0.9)
    state = json.loads(json.dumps(control.state()))
    again = AdaController(Augment("ada"))
    again.load(state)
    assert again.augment.p == T.p and again.batches == 0


# ----------------------------------------------------------------------------- LeCam

def test_lecam_is_0_when_outputs_are_on_the_right_side_of_the_averages():
    real, fake = paddle.to_tensor([-0.5, -1.0]), paddle.to_tensor([0.5, 2.0])
    assert float(lecam_term(real, fake, ema_real=0.0, ema_fake=0.0)) == 0.0      # reals below ema_fake, fakes above
    assert float(lecam_term(real, fake, ema_real=0.5, ema_fake=-0.5)) == 0.0     # at the boundaries too
    # outside: the squared distances past the averages, per side
    got = float(lecam_term(paddle.to_tensor([2.0, 0.0]), paddle.to_tensor([-1.0, 3.0]), ema_real=1.0, ema_fake=0.5))
    assert got == pytest.approx(np.mean([1.5 ** 2, 0.0]) + np.mean([2.0 ** 2, 0.0]))


def test_lecam_averages_start_at_the_first_batch_then_decay():
    lecam = LeCam(0.5)
    term = lecam(paddle.to_tensor([2.0, 2.0]), paddle.to_tensor([-2.0, -2.0]))
    assert (lecam.real, lecam.fake) == (2.0, -2.0)
    assert float(term) == pytest.approx(0.5 * (4.0 ** 2 + 4.0 ** 2))
    lecam(paddle.to_tensor([0.0]), paddle.to_tensor([0.0]))
    assert lecam.real == pytest.approx(0.99 * 2.0) and lecam.fake == pytest.approx(0.99 * -2.0)


# ----------------------------------------------------------------------------- G's moving average

@pytest.mark.parametrize("updates, expected", [(0, 0.1), (10, 0.55), (90, 0.91), (10_000, 0.999)])
def test_ema_warm_up(updates, expected):
    assert methods.ema_beta(updates) == pytest.approx(expected)


def test_ema_averages_weights_and_copies_batchnorm_statistics():
    paddle.seed(0)
    G = network.build_net("dcgan", "G", dict(size=8, width=8, z_dim=100))
    G_ema = network.build_net("dcgan", "G", dict(size=8, width=8, z_dim=100))
    before = {k: v.numpy().copy() for k, v in G_ema.state_dict().items()}
    G.train()
    G(paddle.randn([4, 100]))        # moves G's running statistics
    methods.ema_update(G_ema, G, beta=0.9)
    for k, v in G_ema.state_dict().items():
        source = G.state_dict()[k].numpy()
        expected = source if k.endswith(("_mean", "_variance")) else 0.9 * before[k] + 0.1 * source
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, atol=1e-7, err_msg=k)


# ----------------------------------------------------------------------------- in training

def tiny(data, out, **options):
    base = dict(data=data, out=str(out), epochs=2, batch_size=16, epoch_images=64, width=8, device="cpu",
                log_every=1, sample_every=100)
    return train.TrainConfig(**{**base, **options})


def test_ada_logs_and_plots_p_and_a_resumed_run_continues_it(lfw8, tmp_path):
    path = train.train(tiny(lfw8, tmp_path / "ada", augment="ada", lecam=0.1, ema=True, epochs=3))
    state = checkpoint.load(path)
    with open(tmp_path / "ada" / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert all("augment_p" in r and 0 <= r["augment_p"] <= 1 for r in records if "loss_D" in r)
    assert any(r["augment_p"] > 0 for r in records)          # D separates the 100 faces at once: p rises
    assert os.path.getsize(tmp_path / "ada" / "augment.png") > 1000
    assert state["method"]["ada"]["p"] == records[-1]["augment_p"]
    assert state["method"]["lecam"]["real"] is not None and state["sampler"]["net"] == "G_ema"
    more = checkpoint.load(train.train(tiny(lfw8, tmp_path / "ada", augment="ada", lecam=0.1, ema=True, epochs=4)))
    assert more["iteration"] == state["iteration"] + 4 and more["method"]["ada"]["p"] >= 0


def test_an_augmented_run_resumed_equals_the_whole_one(lfw8, tmp_path):
    options = dict(augment="diffaug", lecam=0.2, ema=True, keep=5, save_every=2)
    whole = checkpoint.load(train.train(tiny(lfw8, tmp_path / "whole", **options)))
    snapshot = str(tmp_path / "whole" / checkpoint.snapshot_name(4))
    resumed = checkpoint.load(train.train(tiny(lfw8, tmp_path / "resumed", resume=snapshot, **options)))
    for part in ("G", "D", "G_ema"):
        for k, v in whole[part].items():
            np.testing.assert_array_equal(resumed[part][k], v, err_msg=(part, k))
    assert resumed["method"]["lecam"] == whole["method"]["lecam"]


@pytest.mark.parametrize("arch, options", [("pggan", dict(size=8, phase_kimg=0.032, batch_sizes="4:16,8:8", z_dim=32,
                                                           fmap_base=32, fmap_max=16, width=None, batch_size=None)),
                                           ("vaegan", dict()), ("torchblog", dict())])
def test_every_gan_trains_with_each_augmentation(arch, options, lfw8, tmp_path):
    for kind in ("diffaug", "ada"):
        path = train.train(tiny(lfw8, tmp_path / kind, arch=arch, augment=kind, epochs=1, **options))
        state = checkpoint.load(path)
        assert state["config"]["augment"] == kind and state["iteration"] > 0


def test_the_moving_average_samples_and_generator_uses_it(lfw8, tmp_path):
    path = train.train(tiny(lfw8, tmp_path / "ema", ema=True))
    state = checkpoint.load(path)
    assert state["sampler"]["net"] == "G_ema"
    assert any(not np.array_equal(state["G_ema"][k], state["G"][k]) for k in state["G"] if k.endswith("weight"))
    result = run_script("generator.py", "--checkpoint", path, "--num", "4", "--out", tmp_path / "faces.png")
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(tmp_path / "faces.png") > 100


@pytest.mark.parametrize("args, phrase", [
    (["--arch", "vae", "--augment", "diffaug"], "--augment does not apply to --arch vae"),
    (["--arch", "vaegan", "--lecam", "0.1"], "--lecam does not apply to --arch vaegan"),
    (["--arch", "pggan", "--ema"], "--ema does not apply to --arch pggan"),
    (["--augment", "diffaugment"], "--augment"),
    (["--lecam", "-1"], "--lecam"),
])
def test_options_that_do_not_apply_are_refused(args, phrase, lfw8, tmp_path):
    result = run_script("train.py", "--data", lfw8, "--out", tmp_path / "out", *args)
    assert_user_error(result, phrase)
    assert not (tmp_path / "out").exists()
