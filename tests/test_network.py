"""network.py and weightInit.py: shapes at every size, the tutorial's initial statistics."""
import numpy as np
import paddle
import pytest

import network


@pytest.mark.parametrize("size", [32, 64, 128])
def test_dcgan_shapes(size):
    G, D = network.build("dcgan", size=size).values()
    z = paddle.randn([2, 100])
    fake = G(z)
    assert fake.shape == [2, 3, size, size]
    assert float(fake.abs().max()) <= 1.0  # tanh
    assert D(fake).shape == [2]


def test_dcgan64_is_the_tutorials_network():
    ch = network.dcgan_channels(64, 64)
    assert ch == {4: 512, 8: 256, 16: 128, 32: 64}
    G, D = network.build("dcgan", size=64).values()
    # The PyTorch DCGAN (no biases) has these counts: conv weights + BN weights and biases.
    assert network.count_parameters(G) == 3576704 + 2 * (512 + 256 + 128 + 64)
    assert network.count_parameters(D) == 2765568 + 2 * (128 + 256 + 512)
    assert not isinstance(D.main[0].norm, paddle.nn.BatchNorm2D)  # no BN on D's first layer


def test_sizes_that_are_not_powers_of_two_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        network.build("dcgan", size=48)
    with pytest.raises(ValueError, match="unknown architecture"):
        network.build("nope")


def test_initial_statistics():
    paddle.seed(1)
    G, D = network.build("dcgan", size=64).values()
    layers = G.sublayers() + D.sublayers()
    convs = np.concatenate([m.weight.numpy().ravel() for m in layers
                            if isinstance(m, (paddle.nn.Conv2D, paddle.nn.Conv2DTranspose))])
    assert abs(convs.mean()) < 1e-3 and abs(convs.std() - 0.02) < 1e-3
    bn = [m for m in layers if isinstance(m, paddle.nn.BatchNorm2D)]
    weights = np.concatenate([m.weight.numpy() for m in bn])
    assert abs(weights.mean() - 1) < 3e-3 and abs(weights.std() - 0.02) < 3e-3
    assert all(np.all(m.bias.numpy() == 0) for m in bn)
    assert bn[0]._momentum == 0.9  # Paddle's 0.9 is PyTorch's 0.1


def test_two_models_in_one_process_are_independent():
    paddle.seed(0)
    G1, _ = network.build("dcgan", size=32).values()
    G2, _ = network.build("dcgan", size=32).values()
    w1, w2 = G1.main[0].conv.weight.numpy(), G2.main[0].conv.weight.numpy()
    assert w1.shape == w2.shape and not np.array_equal(w1, w2)
    G2.set_state_dict(G1.state_dict())
    np.testing.assert_array_equal(G2.main[0].conv.weight.numpy(), w1)


def test_generator_rebuilds_from_its_arguments():
    G, _ = network.build("dcgan", size=32, width=16, z_dim=20).values()
    again = network.build_net("dcgan", "G", G.args)
    assert again.args == {"size": 32, "z_dim": 20, "width": 16}
    assert again(paddle.randn([1, 20])).shape == [1, 3, 32, 32]
