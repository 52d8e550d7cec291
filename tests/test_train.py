"""train.py: defaults per dataset, one optimizer step per update, a short run writes every file."""
import json
import os

import cv2
import numpy as np
import paddle
import pytest

import checkpoint
import logs
import methods
import network
import train
from balance import Tricks
from conftest import assert_user_error, build_dataset, celeba_like, run_script, write_jpegs


def tiny(data, out, **over):
    """A run of a few iterations on 8x8 faces: 64 images per epoch in batches of 16."""
    options = dict(data=data, out=str(out), epochs=2, batch_size=16, epoch_images=64, width=8,
                   sample_every=3, log_every=2, device="cpu")
    options.update(over)
    return train.TrainConfig(**options)


SMALL = dict(batch_size=64, epoch_images=12800, width=32, flip=True, augment="ada", ema=True, lecam=0.1)
BUILT_IN, CELEBA = {"embedded": True, "count": 100}, {"count": 202_599}


@pytest.mark.parametrize("manifest, given, expected", [
    (BUILT_IN, {}, SMALL),
    ({"count": 90}, {}, SMALL),                                      # your own 90 photos: as the built-in 100
    ({"count": 40}, {}, dict(SMALL, batch_size=40)),                 # fewer than a batch: all of them
    ({"count": train.SMALL_DATA}, {}, SMALL),
    ({"count": train.SMALL_DATA + 1}, {}, dict(batch_size=128, epoch_images=train.SMALL_DATA + 1, width=64,
                                               flip=False, augment="none", ema=False, lecam=0.0)),
    (CELEBA, {}, dict(batch_size=128, epoch_images=202_599, width=64, flip=False, augment="none", ema=False,
                      lecam=0.0)),
    (BUILT_IN, dict(batch_size=8, flip=False, augment="none", lecam=0.0),
     dict(batch_size=8, epoch_images=12800, width=32, flip=False, augment="none", ema=True, lecam=0.0)),
    ({"count": 40}, dict(batch_size=80), dict(batch_size=80)),      # given: as given (train refuses it)
    (BUILT_IN, dict(arch="torchblog"), dict(epoch_images=6400, augment="none", ema=False, lecam=0.0)),  # dcgan's
    (CELEBA, dict(epoch_images=1000, width=16), dict(batch_size=128, epoch_images=1000, width=16, flip=False)),
])
def test_defaults_depend_on_the_datasets_size(manifest, given, expected):
    cfg = train.resolve_defaults(train.TrainConfig(**given), manifest, 1)
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.z_dim, cfg.d_steps, cfg.g_steps) == (2e-4, 0.5, 0.999, 100, 1, 2)


def test_a_folder_of_90_photos_trains_with_the_small_data_defaults(tmp_path):
    """A new user's own 90 photos: pretreat.py --crop center, then train.py with no size or recipe flag (a
    shorter epoch here) trains with what the built-in faces get, where the tutorial's batch of 128 was refused."""
    write_jpegs(str(tmp_path / "faces"), celeba_like(90))
    manifest = build_dataset(tmp_path / "mine", src=str(tmp_path / "faces"), crop="center", size=8)
    assert manifest["count"] == 90 and not manifest.get("embedded")
    cfg = train.TrainConfig(data=str(tmp_path / "mine"), out=str(tmp_path / "run"), epochs=1, epoch_images=128,
                            device="cpu")
    state = checkpoint.load(train.train(cfg))
    assert {k: state["config"][k] for k in SMALL if k != "epoch_images"} == \
        {k: v for k, v in SMALL.items() if k != "epoch_images"}
    assert state["iteration"] == 2 and "G_ema" in state


def weights(net):
    return {k: v.numpy().copy() for k, v in net.state_dict().items() if not k.endswith(("_mean", "_variance"))}


def changed(before, net):
    after = weights(net)
    return {k for k in before if not np.array_equal(before[k], after[k])}


def nets(seed=0):
    paddle.seed(seed)
    G, D = network.build("dcgan", size=8, width=8).values()
    opt_G = paddle.optimizer.Adam(learning_rate=2e-4, beta1=0.5, parameters=G.parameters())
    opt_D = paddle.optimizer.Adam(learning_rate=2e-4, beta1=0.5, parameters=D.parameters())
    return G, D, opt_G, opt_D


def eager(G, D, opt_G, opt_D, tricks):
    """The eager step's `run` (methods.Eager) over these networks and optimizers, counting with `tricks`."""
    return methods.Eager({"G": G, "D": D}, {"G": opt_G, "D": opt_D}, counter=tricks)


def test_d_step_moves_only_D_and_g_step_moves_only_G():
    G, D, opt_G, opt_D = nets()
    run = eager(G, D, opt_G, opt_D, Tricks())
    real = paddle.uniform([4, 3, 8, 8], min=-1, max=1)
    g0, d0 = weights(G), weights(D)
    fake = G(paddle.randn([4, 100]))
    stats = run.values(methods.d_step(run, D, real, fake, Tricks()))
    assert set(stats) == {"loss_D", "D_real", "D_fake", "err_R", "err_F", "sign_real", "kept_G", "skip_D", "skip_G"}
    assert stats["skip_D"] is None and stats["skip_G"] is None   # Tricks(): no rule
    assert -1 <= stats["sign_real"] <= 1 and stats["kept_G"] > 0
    assert stats["loss_D"] == pytest.approx(stats["err_R"] + stats["err_F"]) and stats["loss_D"] > 0
    assert 0 < stats["D_real"] < 1 and 0 < stats["D_fake"] < 1
    assert changed(g0, G) == set() and changed(d0, D) == set(d0)
    d1 = weights(D)
    trainable = [k for k, p in D.named_parameters() if not p.stop_gradient]
    assert not any(k.endswith(("_mean", "_variance")) for k in trainable) and len(trainable) == len(d1)
    d_grads = [p.grad.numpy().copy() for p in D.parameters()]  # left from D's own step
    loss_G = float(methods.g_step(run, D, fake))
    assert loss_G > 0
    assert changed(d1, D) == set() and changed(g0, G) == set(g0)
    for before, p in zip(d_grads, D.parameters()):  # G's update computed no D weight gradient
        np.testing.assert_array_equal(p.grad.numpy(), before)
    assert [k for k, p in D.named_parameters() if not p.stop_gradient] == trainable  # D is as it was


@pytest.mark.parametrize("d_steps, g_steps", [(1, 2), (2, 1)])
def test_iteration_equals_the_plain_step_with_separate_forwards(d_steps, g_steps):
    # The plain way: G's fakes for D without a graph, then G forwarded again on the same noise
    # for its update, D's weight gradients computed and discarded. Same maths, more work.
    import paddle.nn.functional as F
    bce = F.binary_cross_entropy_with_logits
    real = paddle.uniform([4, 3, 8, 8], min=-1, max=1)
    G1, D1, oG1, oD1 = nets(1)
    G2, D2, oG2, oD2 = nets(1)
    paddle.seed(7)
    tricks = Tricks()
    run = eager(G1, D1, oG1, oD1, tricks)
    fast = methods.bce_numbers(run.values(methods.bce_iteration(run, real, 100, d_steps, g_steps, tricks)), tricks)

    paddle.seed(7)
    zs = [paddle.randn([4, 100])] + [None] * (d_steps - 1)
    losses_D = []
    for k in range(d_steps):
        z = zs[k] if zs[k] is not None else paddle.randn([4, 100])
        with paddle.no_grad():
            fake = G2(z)
        lr, lf = D2(real), D2(fake)
        loss_D = bce(lr, paddle.ones_like(lr)) + bce(lf, paddle.zeros_like(lf))
        oD2.clear_grad()
        loss_D.backward()
        oD2.step()
        losses_D.append(float(loss_D))
    losses_G = []
    for k in range(g_steps):
        out = D2(G2(zs[0] if k == 0 else paddle.randn([4, 100])))
        loss_G = bce(out, paddle.ones_like(out))
        oG2.clear_grad()
        loss_G.backward()
        oG2.step()
        losses_G.append(float(loss_G))

    assert fast["loss_D"] == pytest.approx(losses_D[-1], rel=1e-5)
    assert fast["loss_G"] == pytest.approx(float(np.mean(losses_G)), rel=1e-5)
    for a, b in ((G1, G2), (D1, D2)):
        wa, wb = weights(a), weights(b)
        for name in wa:
            np.testing.assert_allclose(wa[name], wb[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_short_run_changes_weights_and_writes_every_file(lfw8, tmp_path):
    cfg = tiny(lfw8, tmp_path)
    path = train.train(cfg)
    assert path == str(tmp_path / "checkpoint.pdparams")
    state = paddle.load(path)
    assert state["format"] == checkpoint.FORMAT
    assert (state["epoch"], state["iteration"], state["images_seen"]) == (2, 8, 128)
    assert state["arch"] == "dcgan" and state["arch_args"] == {"size": 8, "z_dim": 100, "width": 8}
    assert state["config"]["epochs"] == 2 and state["fixed_z"].shape == (64, 100)
    assert {"G", "D", "opt_G", "opt_D"} <= set(state)

    paddle.seed(cfg.seed)  # the same seed rebuilds the untrained networks
    G0, D0 = network.build("dcgan", size=8, width=8).values()
    for net0, trained in ((G0, state["G"]), (D0, state["D"])):
        for name, value in weights(net0).items():
            assert not np.array_equal(value, trained[name].numpy()), name

    samples = sorted(os.listdir(tmp_path / "samples"))
    assert samples == ["epoch_0001_iter_000003.png", "epoch_0001_iter_000004.png",
                       "epoch_0002_iter_000006.png", "epoch_0002_iter_000008.png"]
    grid = cv2.imread(str(tmp_path / "samples" / samples[-1]))
    assert grid.shape == (8 * (8 * 10 + 2), 8 * (8 * 10 + 2), 3)  # 8 x 8 faces of 8 px, 2 px apart, shown 8x
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["iteration"] for r in records] == [2, 4, 6, 8]
    assert {"epoch", "images", "loss_D", "loss_G", "D_real", "D_fake", "img_per_s"} <= set(records[0])
    assert cv2.imread(str(tmp_path / "loss.png")) is not None
    from PIL import Image
    with Image.open(tmp_path / "progress.gif") as movie:  # the sample grids, in order, looping
        assert movie.n_frames == 4 and movie.info["loop"] == 0
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


@pytest.mark.parametrize("count, limit, expected", [
    (3, 100, [0, 1, 2]), (100, 100, list(range(100))), (5, 3, [0, 2, 4]), (1000, 4, [0, 333, 666, 999])])
def test_the_movie_keeps_a_bounded_number_of_frames_spread_over_the_run(count, limit, expected):
    assert logs.movie_frames(count, limit) == expected


def test_same_seed_same_run(lfw8, tmp_path):
    a = paddle.load(train.train(tiny(lfw8, tmp_path / "a", epochs=1)))
    b = paddle.load(train.train(tiny(lfw8, tmp_path / "b", epochs=1)))
    for name, value in a["G"].items():
        np.testing.assert_allclose(value.numpy(), b["G"][name].numpy(), rtol=1e-6, atol=1e-7)


def test_an_epoch_too_small_for_a_batch_is_refused(lfw8, tmp_path):
    with pytest.raises(train.ConfigError, match="batch"):
        train.train(tiny(lfw8, tmp_path, batch_size=128, epoch_images=100))


def test_no_dataset_tells_to_run_pretreat(tmp_path):
    result = run_script("train.py", "--data", tmp_path / "nothing", "--out", tmp_path / "out", cwd=tmp_path)
    assert_user_error(result, "pretreat.py")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, phrase", [
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--batch-size", "-3"], "--batch-size must be at least 1"),
    (["--lr", "0"], "--lr must be positive"),
    (["--resume", "nowhere.pdparams"], "--resume nowhere.pdparams: no such checkpoint file"),
    (["--save-every", "-1"], "--save-every must be 0 or more"),
    (["--keep", "-2"], "--keep must be 0 or more"),
    (["--width", "0"], "--width must be at least 1"),
    (["--z-dim", "-5"], "--z-dim must be at least 1"),
    (["--arch", "stylegan"], "invalid choice: 'stylegan'"),
    (["--out", "a_file"], "--out a_file: it is a file, not a folder"),
    (["--margin", "0.6"], "--margin must be in (0, 0.5]"),
    (["--real-label", "1.2"], "--real-label must be in (0.5, 1.0]"),
    (["--flip-labels", "0.7"], "--flip-labels must be in [0, 0.5)"),
    (["--balance", "margins"], "invalid choice: 'margins'"),
    (["--optimizer", "sgd"], "invalid choice: 'sgd'"),
    (["--beta1", "1"], "--beta1 must be in [0, 1), got 1.0"),
    (["--batch-sizes", "4-64"], "--batch-sizes 4-64: '4-64' is not RES:BATCH"),
])
def test_bad_flags_are_refused_at_parse_time(args, phrase, tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert_user_error(run_script("train.py", *args, cwd=tmp_path), phrase)


def test_trained_generator_beats_the_untrained_one(lfw8, tmp_path):
    # Distance between the pixel statistics (mean image, per-pixel spread) of fakes and reals.
    # 200 iterations on 8x8 faces: 0.58-0.75 of the untrained distance over seeds 0-5.
    import facedata
    import generator
    real = facedata.FaceDataset(lfw8).get_batch(np.arange(100))

    def distance(x):
        return np.abs(x.mean(0) - real.mean(0)).mean() + np.abs(x.std(0) - real.std(0)).mean()

    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path), epochs=2, batch_size=32, epoch_images=3200, width=32,
                            flip=True, seed=0, device="cpu")
    G, _ = generator.load_generator(train.train(cfg))
    paddle.seed(0)
    G0, _ = network.build("dcgan", size=8, width=32).values()
    G0.eval()
    z = paddle.to_tensor(np.random.default_rng(9).standard_normal((500, 100)).astype(np.float32))
    with paddle.no_grad():
        trained, untrained = distance(G(z).numpy()), distance(G0(z).numpy())
    assert trained < 0.85 * untrained, (trained, untrained)


def test_training_at_a_smaller_size_than_stored(lfw32, tmp_path):
    state = paddle.load(train.train(tiny(lfw32, tmp_path, size=8, epochs=1)))
    assert state["arch_args"]["size"] == 8 and state["config"]["size"] == 8


def test_size_that_is_not_a_power_of_two_is_refused(tmp_path):
    assert_user_error(run_script("train.py", "--size", "48", cwd=tmp_path), "power of two")
