"""generator.py: rebuilds G from the checkpoint alone, same seed same faces, clear errors."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import paddle
import pytest

import checkpoint as checkpoint_module
import generator
import network
import train
from conftest import ROOT, assert_user_error, run_script


@pytest.fixture(scope="module")
def checkpoint(lfw8, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = train.TrainConfig(data=lfw8, out=str(out), epochs=1, batch_size=16, epoch_images=32, width=8,
                            device="cpu")
    return train.train(cfg)


def test_writes_faces_and_a_grid(checkpoint, tmp_path):
    generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path), "--num", "5", "--seed", "1"])
    names = sorted(os.listdir(tmp_path))
    assert names == ["0000.png", "0001.png", "0002.png", "0003.png", "0004.png", "grid.png"]
    face = cv2.imread(str(tmp_path / "0003.png"))
    assert face.shape == (8, 8, 3)
    assert cv2.imread(str(tmp_path / "grid.png")).shape[0] > 8


def test_same_seed_same_faces_other_seed_other_faces(checkpoint, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path / name), "--num", "4", "--seed", str(seed)])
    read = lambda name: [open(tmp_path / name / f"{i:04d}.png", "rb").read() for i in range(4)]  # noqa: E731
    assert read("a") == read("b")
    assert read("a") != read("c")


def test_a_face_does_not_depend_on_how_many_are_drawn(checkpoint):
    G, _ = generator.load_generator(checkpoint)
    np.testing.assert_array_equal(generator.generate(G, 3, seed=5), generator.generate(G, 300, seed=5)[:3])


def test_no_checkpoint_tells_to_run_train(tmp_path):
    result = run_script("generator.py", "--checkpoint", tmp_path / "none.pdparams", "--out", tmp_path / "g",
                        cwd=tmp_path)
    assert_user_error(result, "train.py")
    assert not (tmp_path / "g").exists()


def test_truncated_checkpoint_is_refused(checkpoint, tmp_path):
    broken = tmp_path / "broken.pdparams"
    broken.write_bytes(open(checkpoint, "rb").read()[:1000])
    result = run_script("generator.py", "--checkpoint", broken, "--out", tmp_path / "g", cwd=tmp_path)
    assert_user_error(result, "cannot read checkpoint")
    assert not (tmp_path / "g").exists()


def test_exported_generator_matches_eager_mode(checkpoint):
    G, _ = generator.load_generator(checkpoint)
    fast = generator.fast_generator(G, checkpoint)
    z = np.random.default_rng(0).standard_normal((20, 100)).astype(np.float32)
    faces, expected = fast(z), network.sample(G, z)
    assert faces.shape == expected.shape == (20, 8, 8, 3) and faces.dtype == np.uint8
    assert np.abs(faces.astype(int) - expected).max() <= 1  # within 1/255 (bf16 is only used if so)


def test_export_is_reused_until_the_checkpoint_changes(checkpoint):
    G, _ = generator.load_generator(checkpoint)
    generator.fast_generator(G, checkpoint)
    stamp = os.path.join(os.path.dirname(checkpoint), generator.EXPORT_DIR, "export.json")
    model = os.path.join(os.path.dirname(stamp), json.load(open(stamp))["model"])
    first = os.stat(model).st_mtime_ns
    generator.fast_generator(G, checkpoint)
    assert os.stat(model).st_mtime_ns == first
    st = os.stat(checkpoint)
    os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as if training wrote a new one
    generator.fast_generator(G, checkpoint)
    assert os.stat(model).st_mtime_ns != first
    assert json.load(open(stamp))["source"]["mtime_ns"] == st.st_mtime_ns + 10**9


def test_engines_agree_and_export_writes_a_deployable_model(checkpoint, tmp_path):
    for engine in ("dygraph", "inference"):
        generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path / engine), "--num", "6", "--seed", "2",
                        "--engine", engine, "--device", "cpu"])
    for i in range(6):
        a = cv2.imread(str(tmp_path / "dygraph" / f"{i:04d}.png")).astype(int)
        b = cv2.imread(str(tmp_path / "inference" / f"{i:04d}.png")).astype(int)
        assert np.abs(a - b).max() <= 1
    generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path / "x"), "--num", "1",
                    "--export", str(tmp_path / "deploy" / "gen")])
    assert {"gen.pdiparams"} < set(os.listdir(tmp_path / "deploy"))
    assert {"gen.json", "gen.pdmodel"} & set(os.listdir(tmp_path / "deploy"))


@pytest.mark.parametrize("arch, args", [("torchblog", dict(size=16, z_dim=100, width=8)),
                                        ("pggan", dict(size=16, z_dim=32, fmap_base=64, fmap_max=16)),
                                        ("vae", dict(size=16, z_dim=100, width=8)),
                                        ("mlp", dict(size=16, z_dim=100)), ("conv128", dict(size=128, z_dim=100))])
def test_paddle_inference_draws_what_eager_mode_draws_for_every_architecture(arch, args, tmp_path):
    """The exported forms: nearest upsampling rewritten for oneDNN, PG-GAN's convolution + leaky ReLU without
    the fusion pass that crashes; the faces within one grey level of eager mode's, float32 or bf16."""
    paddle.seed(0)
    G = network.build_net(arch, "G", args)
    path = str(tmp_path / "checkpoint.pdparams")
    checkpoint_module.save(path, {"format": checkpoint_module.FORMAT, "arch": arch, "arch_args": G.args,
                                  "G": G.state_dict()})
    z = np.random.default_rng(1).standard_normal((6, args["z_dim"])).astype(np.float32)
    fast = generator.fast_generator(G, path)
    assert np.abs(fast(z).astype(int) - network.sample(G, z).astype(int)).max() <= 1
    assert all("forward" not in vars(layer) for layer in G.sublayers())   # the export left G's layers as they were


def test_seeds_give_the_faces_a_larger_run_gives_for_them(checkpoint, tmp_path):
    generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path / "few"), "--seeds", "3,7"])
    generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path / "many"), "--seeds", "0-9,12"])
    assert sorted(os.listdir(tmp_path / "few")) == ["grid.png", "seed0003.npy", "seed0003.png", "seed0007.npy",
                                                    "seed0007.png"]
    assert len(os.listdir(tmp_path / "many")) == 23
    np.testing.assert_array_equal(np.load(tmp_path / "few" / "seed0007.npy"), generator.seed_noise([7], 100)[0])
    for name in ("seed0003.png", "seed0007.png"):
        assert (tmp_path / "few" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()
    assert (tmp_path / "few" / "seed0003.png").read_bytes() != (tmp_path / "few" / "seed0007.png").read_bytes()


def test_a_walk_is_a_looping_gif_through_its_points(checkpoint, tmp_path):
    from PIL import Image
    generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path), "--walk", "3", "--seed", "1"])
    frames = 3 * generator.WALK_FRAMES
    assert len(os.listdir(tmp_path / "walk")) == frames
    with Image.open(tmp_path / "walk.gif") as gif:
        assert gif.n_frames == frames and gif.info["loop"] == 0  # 0: forever
    z = np.random.default_rng(0).standard_normal((2, 100))
    path = generator.walk_noise(z, 4)
    np.testing.assert_allclose(path[0], z[0], rtol=1e-6)       # starts on the first point,
    np.testing.assert_allclose(path[4], z[1], rtol=1e-6)       # passes the second,
    assert np.abs(path[-1] - z[0]).max() < np.abs(path[-1] - z[1]).max()   # and turns back to the first
    mid = generator.slerp(z[0], z[1], 0.5)
    assert np.linalg.norm(mid) == pytest.approx((np.linalg.norm(z[0]) + np.linalg.norm(z[1])) / 2, rel=0.1)


def test_walk_ones_slides_a_block_of_ones_along_z(checkpoint, tmp_path):
    from PIL import Image
    z = generator.ones_noise(100)
    assert z.shape == (19, 100)                          # block 10 at 0, 5, ..., 90
    for i, row in enumerate(z):
        assert set(np.flatnonzero(row)) == set(range(5 * i, 5 * i + 10)) and (row[row != 0] == 1).all()
    assert generator.ones_noise(7).tolist() == [[1.0] * 7]   # a z shorter than the block: all ones
    generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path), "--walk-ones"])
    assert len(os.listdir(tmp_path / "walk_ones")) == 19
    with Image.open(tmp_path / "walk_ones.gif") as gif:
        assert gif.n_frames == 19 and gif.info["loop"] == 0
        first = np.array(gif.convert("RGB"))
        gif.seek(10)
        assert not np.array_equal(first, np.array(gif.convert("RGB")))   # the faces change as the block moves


def test_truncation_one_draws_todays_faces_and_less_draws_faces_nearer_the_average(checkpoint, tmp_path):
    for name, psi in (("plain", None), ("one", "1"), ("half", "0.5")):
        generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path / name), "--num", "40", "--seed", "3",
                        "--engine", "dygraph"] + (["--truncation", psi] if psi else []))
    read = lambda name: [open(tmp_path / name / f"{i:04d}.png", "rb").read() for i in range(40)]  # noqa: E731
    assert read("one") == read("plain")   # PSI 1: exactly today's faces, file for file
    G, _ = generator.load_generator(checkpoint)
    faces = {psi: generator.generate(G, 40, seed=3, psi=psi).astype(np.float32) for psi in (1.0, 0.5, 0.0001)}
    spread = {psi: float(f.std(axis=0).mean()) for psi, f in faces.items()}
    assert spread[0.0001] < spread[0.5] < spread[1.0]   # less varied, down to one face: G(0), the average's
    assert float(np.abs(faces[0.0001] - faces[0.0001][0]).max()) <= 1
    np.testing.assert_array_equal(generator.truncate(np.ones((2, 3), np.float32), 1.0), np.ones((2, 3)))


def test_a_morph_loops_through_latent_files_and_back(checkpoint, tmp_path):
    from PIL import Image
    z = np.random.default_rng(4).standard_normal((3, 100)).astype(np.float32)
    paths = []
    for i, row in enumerate(z):
        paths.append(str(tmp_path / f"{i}.npy"))
        np.save(paths[-1], row if i else row[None])   # one z, flat or as a row
    generator.main(["--checkpoint", checkpoint, "--out", str(tmp_path / "out"), "--morph", *paths[:2],
                    "--engine", "dygraph"])
    frames = 2 * generator.WALK_FRAMES
    assert len(os.listdir(tmp_path / "out" / "morph")) == frames
    with Image.open(tmp_path / "out" / "morph.gif") as gif:
        assert gif.n_frames == frames and gif.info["loop"] == 0
    G, _ = generator.load_generator(checkpoint)
    for frame, row in ((0, z[0]), (generator.WALK_FRAMES, z[1])):   # it passes through each latent's own face
        face = cv2.imread(str(tmp_path / "out" / "morph" / f"{frame:04d}.png"))[..., ::-1]
        np.testing.assert_array_equal(face, generator.draw(G, row[None])[0])
    np.save(tmp_path / "short.npy", z[0, :10])
    for argv, phrase in ((["--morph", paths[0]], "--morph needs at least 2 latent files"),
                         (["--morph", paths[0], str(tmp_path / "short.npy")], "holds 10 float32 numbers, not the 100"),
                         (["--morph", paths[0], str(tmp_path / "none.npy")], "cannot read latent"),
                         (["--morph", *paths[:2], "--walk", "2"], "write different things")):
        assert_user_error(run_script("generator.py", "--checkpoint", checkpoint, *argv, cwd=tmp_path), phrase)


def test_truncation_is_refused_where_it_changes_nothing_or_has_no_meaning():
    generator.check_truncation(1.0, "pggan", reconstruct=16)   # PSI 1 is no truncation: nothing to refuse
    generator.check_truncation(0.7, "dcgan")
    with pytest.raises(train.ConfigError, match="--arch pggan: its G normalises z to unit length first"):
        generator.check_truncation(0.7, "pggan")
    with pytest.raises(train.ConfigError, match="--reconstruct, whose faces come from the encoder's z"):
        generator.check_truncation(0.7, "vae", reconstruct=16)


@pytest.mark.parametrize("args, phrase", [
    (["--truncation", "0"], "--truncation must be above 0 and at most 1, got 0"),
    (["--truncation", "1.5"], "--truncation must be above 0 and at most 1, got 1.5"),
    (["--walk", "1"], "--walk must be at least 2, got 1"),
    (["--seeds", "5-2"], "--seeds 5-2: '5-2' is not a seed or a range"),
    (["--walk", "3", "--seeds", "1"], "--walk, --morph, --walk-ones, --seeds and --reconstruct write different"),
    (["--walk-ones", "--walk", "2"], "--walk, --morph, --walk-ones, --seeds and --reconstruct write different"),
    (["--reconstruct", "0"], "--reconstruct must be at least 1"),
])
def test_bad_walks_and_seeds(args, phrase, tmp_path):
    assert_user_error(run_script("generator.py", *args, cwd=tmp_path), phrase)


def test_exporting_prints_none_of_paddles_own_log_lines(tmp_path):
    # Paddle 3.3's export logs "W... Paddle static graph(PIR) not support input out tensor for now!!!!!" for PG-GAN
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import generator, network; "
            "G = network.build_net('pggan', 'G', dict(size=16, z_dim=32, fmap_base=64, fmap_max=16)); "
            "generator.export(G, sys.argv[2])")
    result = subprocess.run([sys.executable, "-c", code, ROOT, str(tmp_path / "g")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert os.path.exists(tmp_path / "g.pdiparams")


def test_a_paddle_error_is_one_line_in_a_message():
    try:
        paddle.to_tensor([1.0, 2.0]).reshape([3])
    except ValueError as e:
        line = generator.one_line(e)
    assert line.startswith("ValueError: (InvalidArgument) The 'shape' in ReshapeOp is invalid.") and "\n" not in line
    traced = RuntimeError("\n--------\nC++ Traceback (most recent call last):\n--------\n0   paddle::Run\n\n"
                          "----------------------\nError Message Summary:\n----------------------\n"
                          "InvalidArgumentError: The type of data does not match.\n  [Hint: Expected dtype().] "
                          "(at /paddle/dense_tensor.cc:153)\n")
    assert generator.one_line(traced) == "RuntimeError: InvalidArgumentError: The type of data does not match."
