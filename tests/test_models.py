"""The "Make Your Own GAN" series' models: --arch mlp and --arch conv128, layer for layer."""
import cv2
import numpy as np
import paddle
import pytest

import checkpoint
import generator
import network
import train
import weightInit
from conftest import assert_user_error, build_dataset, run_script


@pytest.mark.parametrize("size", [8, 32, 64])
def test_mlp_shapes_at_any_size(size):
    G, D = network.build("mlp", size=size, z_dim=100).values()
    faces = G(paddle.randn([3, 100]))
    assert faces.shape == [3, 3, size, size] and float(faces.abs().max()) <= 1  # 2 * sigmoid - 1
    assert D(faces).shape == [3]
    assert [tuple(m.weight.shape) for m in G.sublayers() if isinstance(m, paddle.nn.Linear)] == \
        [(100, 300), (300, 3 * size * size)]
    assert [tuple(m.weight.shape) for m in D.sublayers() if isinstance(m, paddle.nn.Linear)] == \
        [(3 * size * size, 100), (100, 1)]
    assert [m.weight.shape[0] for m in G.sublayers() + D.sublayers() if isinstance(m, paddle.nn.LayerNorm)] == \
        [300, 100]


def test_conv128_is_the_series_network_layer_for_layer():
    G, D = network.build("conv128", size=128, z_dim=100).values()
    z = paddle.randn([2, 100])
    assert G.dense(z).shape == [2, 3 * 28 * 28]
    faces = G(z)
    assert faces.shape == [2, 3, 128, 128] and float(faces.abs().max()) <= 1
    assert D.main(faces).shape == [2, 3, 10, 10] and D(faces).shape == [2]
    convs = [m for m in G.sublayers() + D.sublayers() if isinstance(m, (paddle.nn.Conv2D, paddle.nn.Conv2DTranspose))]
    assert [tuple(c.weight.shape) for c in convs] == [(3, 256, 8, 8), (256, 3, 8, 8),
                                                      (256, 3, 8, 8), (256, 256, 8, 8), (3, 256, 8, 8)]
    assert all(c.bias is None for c in convs)  # no bias in the convolutions, as the post
    assert [m._num_features for m in D.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)] == [256, 256]
    assert [m.p for m in D.sublayers() if isinstance(m, paddle.nn.Dropout2D)] == [0.3, 0.3, 0.3]
    assert tuple(D.head.weight.shape) == (300, 1)


def test_pytorch_default_initialisation():
    paddle.seed(0)
    lin = paddle.nn.Linear(1000, 64)
    conv_t = paddle.nn.Conv2DTranspose(256, 3, 8)
    for layer in (lin, conv_t):
        weightInit.torch_default_init(layer)
    bound = 1 / 1000 ** 0.5
    w = lin.weight.numpy()
    assert np.abs(w).max() <= bound and w.std() == pytest.approx(bound / 3 ** 0.5, rel=0.02)
    assert np.abs(lin.bias.numpy()).max() <= bound and lin.bias.numpy().std() > 0
    assert np.abs(conv_t.weight.numpy()).max() <= 1 / (3 * 64) ** 0.5  # PyTorch's fan_in of a transposed conv


def test_mlp_trains_with_the_posts_settings_and_generates(lfw8, tmp_path):
    cfg = train.TrainConfig(data=lfw8, out=str(tmp_path / "run"), arch="mlp", epochs=1, batch_size=16,
                            epoch_images=32, device="cpu")
    state = checkpoint.load(train.train(cfg))
    assert state["arch_args"] == {"size": 8, "z_dim": 100} and state["iteration"] == 2
    assert (state["config"]["lr"], state["config"]["beta1"], state["config"]["g_steps"]) == (1e-4, 0.9, 1)
    paddle.seed(cfg.seed)
    untrained = network.build("mlp", size=8, z_dim=100)["G"]
    assert not np.array_equal(state["G"]["main.0.weight"], untrained.main[0].weight.numpy())
    generator.main(["--checkpoint", str(tmp_path / "run" / checkpoint.FILE), "--out", str(tmp_path / "faces"),
                    "--num", "2", "--seed", "0"])
    assert cv2.imread(str(tmp_path / "faces" / "0001.png")).shape == (8, 8, 3)


def test_conv128_trains_at_128_and_refuses_other_sizes(lfw8, tmp_path):
    data = tmp_path / "lfw128"
    build_dataset(data, size=128)  # pretreat scales the 25x25 faces up to 128
    cfg = train.TrainConfig(data=str(data), out=str(tmp_path / "run"), arch="conv128", epochs=1, batch_size=2,
                            epoch_images=2, device="cpu")
    state = checkpoint.load(train.train(cfg))
    assert state["arch_args"] == {"size": 128, "z_dim": 100} and state["iteration"] == 1
    generator.main(["--checkpoint", str(tmp_path / "run" / checkpoint.FILE), "--out", str(tmp_path / "faces"),
                    "--num", "1", "--seed", "0"])
    assert cv2.imread(str(tmp_path / "faces" / "0000.png")).shape == (128, 128, 3)
    result = run_script("train.py", "--arch", "conv128", "--data", lfw8, "--out", tmp_path / "small", cwd=tmp_path)
    assert_user_error(result, "--arch conv128 cannot train on the 8x8 images", "fit 128x128 images only")
    assert not (tmp_path / "small").exists()


@pytest.mark.parametrize("args, phrase", [
    (["--size", "48"], "--size 48 does not fit --arch dcgan: size must be a power of two >= 8"),
    (["--arch", "conv128", "--size", "64"], "--size 64 does not fit --arch conv128: its layers fit 128x128"),
])
def test_size_is_checked_against_the_architecture_at_parse_time(args, phrase, tmp_path):
    assert_user_error(run_script("train.py", *args, cwd=tmp_path), phrase)


def test_the_mlp_takes_one_image_per_update_as_the_series_unless_told():
    built_in, celeba = {"embedded": True, "count": 100}, {"count": 202599}
    assert train.resolve_defaults(train.TrainConfig(arch="mlp"), built_in, 1).batch_size == 1
    assert train.resolve_defaults(train.TrainConfig(arch="mlp"), celeba, 1).batch_size == 1
    assert train.resolve_defaults(train.TrainConfig(arch="mlp", batch_size=8), built_in, 1).batch_size == 8
    assert train.resolve_defaults(train.TrainConfig(arch="dcgan"), built_in, 1).batch_size == 64
