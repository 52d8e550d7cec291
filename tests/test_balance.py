"""balance.py and --arch torchblog: the Torch blog's rules, label tricks, RMSProp warm-up, monitor plot."""
import json
import os
from types import SimpleNamespace

import cv2
import numpy as np
import paddle
import pytest

import balance
import checkpoint
import generator
import methods
import network
import train
from balance import Tricks, l2_step, label_targets, margin_rule, rmsprop_lr


@pytest.mark.parametrize("err_real, err_fake, expected", [
    (0.5, 0.5, (True, True)),     # both in the band: both learn
    (0.5, 0.1, (False, True)),    # D spots fakes too well: D waits
    (0.2, 0.5, (False, True)),    # D knows reals too well: D waits
    (0.5, 0.8, (True, False)),    # D is fooled by fakes: G learns nothing from it
    (0.75, 0.5, (True, False)),   # D misses reals: G waits
    (0.1, 0.9, (True, True)),     # both would wait: both learn
    (0.9, 0.1, (True, True)),
    (0.3, 0.7, (True, True)),     # on the margins themselves: no skip
])
def test_margin_rule(err_real, err_fake, expected):
    assert margin_rule(err_real, err_fake, 0.3) == expected


@pytest.mark.parametrize("coef, loss_g, expected", [
    (0.0, 1.5, 1e-5),      # G losing: D gets more decay
    (1e-5, 1.0, 1e-5),     # in between: unchanged
    (2e-5, 0.5, 1e-5),     # G winning: less decay
    (0.0, 0.5, 0.0),       # never below 0
    (5e-6, 0.5, 0.0),
    (3e-5, 1.3, 3e-5),     # the thresholds themselves: unchanged
    (3e-5, 0.9, 3e-5),
])
def test_l2_step(coef, loss_g, expected):
    assert l2_step(coef, loss_g) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("updates, expected", [(0, 1e-3 / 50), (9, 1e-3 / 50), (10, 1e-3 / 5), (29, 1e-3 / 5),
                                               (30, 1e-3), (10_000, 1e-3)])
def test_rmsprop_warmup(updates, expected):
    assert rmsprop_lr(1e-3, updates) == pytest.approx(expected)


def test_label_targets():
    like = paddle.zeros([4000])
    np.testing.assert_allclose(label_targets(like, 0.9).numpy(), 0.9)
    paddle.seed(0)
    jittered = label_targets(like, 0.95, jitter=0.1).numpy()
    assert jittered.min() >= 0.85 - 1e-6 and jittered.max() <= 1.0 and jittered.std() > 0.03
    assert 0.2 < (jittered == 1.0).mean() < 0.3  # the quarter above 1 is clipped to 1
    flipped = label_targets(like, 1.0, flip=0.25).numpy()
    assert set(np.unique(flipped)) == {0.0, 1.0} and 0.2 < (flipped == 0).mean() < 0.3
    np.testing.assert_allclose(label_targets(like, 0.0, flip=0.0).numpy(), 0.0)


def test_rmsprop_steps_warm_up_and_count():
    lin = paddle.nn.Linear(2, 1)
    opt = balance.make_optimizer("rmsprop", 1e-3, 0.5, 0.999, lin.parameters())
    tricks = Tricks(optimizer="rmsprop", lr=1e-3)
    rates = []
    for _ in range(31):
        lin(paddle.ones([1, 2])).sum().backward()
        tricks.step(opt, "G")
        rates.append(opt.get_lr())
        opt.clear_grad()
    assert rates[0] == rates[9] == pytest.approx(2e-5) and rates[10] == rates[29] == pytest.approx(2e-4)
    assert rates[30] == pytest.approx(1e-3) and (tricks.g_updates, tricks.d_updates) == (31, 0)


def test_l2_penalty_is_half_the_squared_weights():
    D = network.TorchBlogDiscriminator(size=8, width=4)
    assert float(balance.l2_penalty(D, 0.0)) == 0.0
    expected = 0.5 * sum(float((p * p).sum()) for p in D.parameters() if p.trainable) / 2
    assert float(balance.l2_penalty(D, 0.5)) == pytest.approx(expected, rel=1e-5)


def iterate(G, D, opt_G, opt_D, real, tricks, agree=None):
    """One eager BCE iteration (d_steps 1, g_steps 2) with `tricks`; `agree`, the mean over several processes."""
    procs = SimpleNamespace(world=2, mean=agree) if agree else None
    run = methods.Eager({"G": G, "D": D}, {"G": opt_G, "D": opt_D}, counter=tricks, procs=procs)
    return methods.bce_numbers(run.values(methods.bce_iteration(run, real, 100, 1, 2, tricks)), tricks)


class Oracle(paddle.nn.Layer):
    """A D that knows which batch is real: logit `real` for it and `fake` for anything else."""

    def __init__(self, real_batch, real, fake):
        super().__init__()
        self.w = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(0.0))
        self.real_batch, self.real, self.fake = real_batch, real, fake

    def forward(self, x):
        is_real = x.shape == self.real_batch.shape and bool(paddle.equal_all(x, self.real_batch))
        # a little of the image in the logit, so that G gets a gradient through it
        return self.w * 0 + 0.01 * x.reshape([x.shape[0], -1]).mean(1) + (self.real if is_real else self.fake)


@pytest.mark.parametrize("real_logit, fake_logit, skipped", [(8.0, -8.0, "D"), (-8.0, 8.0, "G")])
def test_a_too_strong_D_waits_and_a_too_weak_D_stops_G(real_logit, fake_logit, skipped):
    paddle.seed(0)
    G = network.DCGANGenerator(size=8, width=8)
    real = paddle.uniform([4, 3, 8, 8], min=-1, max=1)
    D = Oracle(real, real_logit, fake_logit)
    opt_G = paddle.optimizer.Adam(learning_rate=2e-4, beta1=0.5, parameters=G.parameters())
    opt_D = paddle.optimizer.Adam(learning_rate=2e-4, beta1=0.5, parameters=D.parameters())
    tricks = Tricks(balance="margin", margin=0.3)
    before = {k: v.numpy().copy() for k, v in G.state_dict().items() if not k.endswith(("_mean", "_variance"))}
    for _ in range(5):
        stats = iterate(G, D, opt_G, opt_D, real, tricks)
    moved = any(not np.array_equal(v, G.state_dict()[k].numpy()) for k, v in before.items())
    if skipped == "D":  # errors near 0: D is not updated, G goes on learning
        assert (tricks.d_skips, tricks.g_skips, tricks.d_updates, tricks.g_updates) == (5, 0, 0, 10) and moved
        assert stats["err_R"] < 0.3 and stats["err_F"] < 0.3
    else:               # errors near 8: G learns nothing from such a D and waits; D goes on
        assert (tricks.d_skips, tricks.g_skips, tricks.d_updates, tricks.g_updates) == (0, 5, 5, 0) and not moved
        assert stats["loss_G"] == pytest.approx(float(paddle.nn.functional.softplus(paddle.to_tensor(-8.0))),
                                                rel=0.05)


@pytest.mark.parametrize("rule", ["margin", "equilibrium"])
def test_with_several_processes_the_rule_decides_on_their_mean_errors(rule):
    """This process's D wins by far (errors near 0); the mean over all processes (`agree`) is in the band,
    so every process updates D, as the others decide too, and they join the same gradient reductions."""
    paddle.seed(0)
    G = network.DCGANGenerator(size=8, width=8)
    real = paddle.uniform([4, 3, 8, 8], min=-1, max=1)
    D = Oracle(real, 8.0, -8.0)
    opt_G = paddle.optimizer.Adam(learning_rate=2e-4, parameters=G.parameters())
    opt_D = paddle.optimizer.Adam(learning_rate=2e-4, parameters=D.parameters())
    asked = []
    agree = lambda errors: asked.append(errors) or [0.6, 0.6]   # noqa: E731
    alone, together = Tricks(balance=rule, margin=0.3), Tricks(balance=rule, margin=0.3)
    iterate(G, D, opt_G, opt_D, real, alone)
    iterate(G, D, opt_G, opt_D, real, together, agree=agree)
    assert (alone.d_skips, together.d_skips, together.d_updates) == (1, 0, 1)
    assert len(asked) == 1 and max(asked[0]) < 0.01      # this process's own errors went into the mean
    iterate(G, D, opt_G, opt_D, real, Tricks(), agree=agree)
    assert len(asked) == 1                                # no rule, nothing to agree on: no communication


def test_torchblog_networks_at_every_size():
    for size in (8, 16, 32, 64):
        G, D = network.build("torchblog", size=size, width=8).values()
        faces = G(paddle.randn([3, 100]))
        assert faces.shape == [3, 3, size, size] and float(faces.abs().max()) <= 1
        assert D(faces).shape == [3]
    G, D = network.build("torchblog", size=64, width=64).values()  # the blog's channels
    assert G.dense.weight.shape == [100, 128 * 8 * 8] and D.head[0].weight.shape == [96 * 8 * 8, 1024]
    assert [b[1].conv.weight.shape[0] for b in G.main[:3]] == [256, 256, 128]
    assert not [m for m in D.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]


def test_torchblog_with_margin_and_rmsprop_trains_resumes_and_generates(lfw8, tmp_path):
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path / "run"), arch="torchblog", balance="margin",
                            optimizer="rmsprop", real_label=0.9, label_jitter=0.05, flip_labels=0.05, epochs=2,
                            batch_size=16, epoch_images=64, width=8, log_every=1, device="cpu")
    whole = checkpoint.load(train.train(cfg))
    assert whole["config"]["lr"] == 1e-3 and whole["method"]["balance"] == "margin"
    assert whole["method"]["d_updates"] + whole["method"]["d_skips"] == 8
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert {"err_R", "err_F", "d_skips", "g_skips", "coef_l2"} <= set(records[-1])
    assert cv2.imread(str(tmp_path / "run" / "monitor.png")) is not None

    # stopped after epoch 1 and resumed: the same weights, dropout and label noise included
    part = train.TrainConfig(**{**vars(cfg), "out": str(tmp_path / "parts"), "epochs": 1})
    train.train(part)
    resumed = checkpoint.load(train.train(train.TrainConfig(**{**vars(part), "epochs": 2})))
    for k, v in whole["G"].items():
        np.testing.assert_array_equal(resumed["G"][k], v, err_msg=k)
    assert resumed["method"] == whole["method"]

    generator.main(["--checkpoint", str(tmp_path / "run" / checkpoint.FILE), "--out", str(tmp_path / "faces"),
                    "--num", "4", "--seed", "0"])
    assert sorted(os.listdir(tmp_path / "faces")) == ["0000.png", "0001.png", "0002.png", "0003.png", "grid.png"]


def test_l2_balance_moves_its_coefficient(lfw8, tmp_path):
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path), balance="l2", epochs=1, batch_size=16, epoch_images=64,
                            width=8, log_every=1, device="cpu")
    state = checkpoint.load(train.train(cfg))
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    expected = 0.0
    for r in records:  # each iteration's loss_G moved the coefficient by the rule
        expected = l2_step(expected, r["loss_G"])
        assert r["coef_l2"] == pytest.approx(expected, abs=1e-12)
    assert state["method"]["coef_l2"] == pytest.approx(expected, abs=1e-12)


def test_auto_chooses_the_static_step_whatever_the_tricks():
    assert methods.choose_step("auto", "cpu", "dcgan", 1) == "static"
    assert methods.choose_step("auto", "cpu", "torchblog", 1) == "static"
    assert methods.choose_step("auto", "cpu", "dcgan", 2) == "dygraph"     # several processes
    assert methods.choose_step("auto", "gpu", "torchblog", 1) == "dygraph"
