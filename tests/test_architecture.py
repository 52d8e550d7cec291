"""A new architecture is one composition of network.py's blocks and one registry entry: nothing else changes.

The toy below is defined here, in the test, and registered for the test's duration only. It
trains through train.py, generates through generator.py and is scored by evaluate.py, none
of which knows its name.
"""
import os

import cv2
import numpy as np
import paddle
import paddle.nn as nn
import pytest

import checkpoint
import evaluate
import generator
import network
import train


class ToyGenerator(nn.Sequential):
    """z -> 4x4 -> 8x8 RGB: two of network.py's up blocks."""

    def __init__(self, size=8, z_dim=16, width=4):
        super().__init__(nn.Unflatten(1, [z_dim, 1, 1]),                                 # -> [N, z, 1, 1]
                         network.up_block(z_dim, 2 * width, stride=1, padding=0),      # -> [N, 2w, 4, 4]
                         network.up_block(2 * width, 3, norm=False, act="tanh"))       # -> [N, 3, 8, 8]
        self.args = {"size": size, "z_dim": z_dim, "width": width}   # what a checkpoint rebuilds it from


class ToyDiscriminator(nn.Sequential):
    """8x8 RGB -> one logit: one of network.py's conv blocks and a 4x4 convolution."""

    def __init__(self, size=8, z_dim=16, width=4):
        super().__init__(network.ConvBlock(3, width, norm=False),                      # -> [N, w, 4, 4]
                         nn.Conv2D(width, 1, 4, bias_attr=False), nn.Flatten(0))       # -> [N]
        self.args = {"size": size, "z_dim": z_dim, "width": width}


@pytest.fixture
def toy(monkeypatch):
    entry = network.Architecture({"G": ToyGenerator, "D": ToyDiscriminator}, ("size", "z_dim", "width"), "bce")
    monkeypatch.setitem(network.ARCHITECTURES, "toy", entry)
    return entry


def test_a_toy_architecture_trains_resumes_generates_and_evaluates(toy, lfw8, tmp_path):
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path / "run"), arch="toy", epochs=2, batch_size=16,
                            epoch_images=64, width=4, z_dim=16, log_every=1, device="cpu")
    path = train.train(cfg)
    state = checkpoint.load(path)
    assert (state["arch"], state["iteration"]) == ("toy", 8)
    assert state["arch_args"] == {"size": 8, "z_dim": 16, "width": 4}
    assert state["sampler"] == {"net": "G", "role": "G", "stage": None}
    paddle.seed(0)
    untrained = network.build("toy", **state["arch_args"])["G"]
    assert not np.array_equal(state["G"]["1.conv.weight"], untrained[1].conv.weight.numpy())
    longer = checkpoint.load(train.train(train.TrainConfig(**{**vars(cfg), "epochs": 3})))
    assert longer["iteration"] == 12

    generator.main(["--checkpoint", path, "--out", str(tmp_path / "faces"), "--num", "3", "--seed", "0"])
    assert sorted(os.listdir(tmp_path / "faces")) == ["0000.png", "0001.png", "0002.png", "grid.png"]
    assert cv2.imread(str(tmp_path / "faces" / "0000.png")).shape == (8, 8, 3)

    metrics = evaluate.evaluate(evaluate.EvalConfig(checkpoint=path, data=lfw8, num=20))
    assert set(metrics["results"]) == {"trained", "untrained", "real (floor)"}
    assert metrics["results"]["trained"]["swd_x1e3"] > 0


def test_settings_follow_the_registry(toy):
    # width is an argument of the toy, so it applies; PG-GAN's --phase-kimg does not
    cfg = train.TrainConfig(arch="toy", width=4, phase_kimg=1.0)
    with pytest.raises(train.ConfigError, match="--phase-kimg does not apply to --arch toy: only to --arch pggan"):
        train.check_settings(cfg, {"arch", "width", "phase_kimg"})
    train.check_settings(train.TrainConfig(arch="toy", width=4, balance="margin"), None)
    filled = train.resolve_defaults(train.TrainConfig(arch="toy"), {"embedded": True, "count": 100}, 1)
    assert (filled.width, filled.batch_size, filled.lr, filled.g_steps) == (32, 64, 2e-4, 2)
