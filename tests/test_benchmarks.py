"""benchmarks/: the scripts run and print the JSON their README promises (numbers are not judged here)."""
import json

import pytest

import checkpoint
from conftest import run_script


def test_data_benchmark_prints_one_json_line(tmp_path):
    result = run_script("benchmarks/data.py", "--num", 24, "--small", 8, "--batch", 8, "--repeats", 1,
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert line["images"] == 24 and line["skipped"] == 0
    for key in ("pretreat_folder_img_s", "pretreat_zip_img_s", "decode_img_s", "tutorial_img_s",
                "folder_vs_tutorial", "folder_vs_decode", "peak_rss_folder_mb", "peak_rss_zip_small_mb",
                "reader_img_s"):
        assert line[key] > 0, key


@pytest.mark.parametrize("step, path", [("auto", "static"), ("dygraph", "dygraph")])
def test_train_step_benchmark_prints_one_json_line(step, path, tmp_path):
    result = run_script("benchmarks/train_step.py", "--size", 16, "--batch", 4, "--width", 8, "--steps", 1,
                        "--warmup", 0, "--repeats", 1, "--device", "cpu", "--step", step, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert line["mode"] == "train" and line["batch"] == 4 and line["img_per_s"] > 0
    assert line["path"] == path and line["threads"] is not None


@pytest.mark.parametrize("arch, sizes", [("dcgan", ["--size", 16, "--width", 8]),
                                         ("torchblog", ["--size", 16, "--width", 8]), ("pggan", ["--size", 8])])
def test_generate_benchmark_prints_one_json_line(arch, sizes, tmp_path):
    result = run_script("benchmarks/generate.py", "--arch", arch, *sizes, "--batch", 4, "--steps", 1,
                        "--warmup", 0, "--repeats", 1, "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert (line["mode"], line["arch"], line["size"], line["batch"]) == ("generate", arch, sizes[1], 4)
    assert line["path"].startswith("inference-onednn") and line["img_per_s"] > 0


@pytest.mark.parametrize("arch, sizes, g_steps, path", [
    ("torchblog", ["--size", 16, "--width", 8, "--batch", 4], 2, "static"),   # train.py's 2 G updates
    ("pggan", ["--size", 8, "--batch", 4], None, "static"),                   # at 8x8 stabilised, GP and average
    ("torchblog", ["--size", 16, "--width", 8, "--batch", 4, "--balance", "margin", "--optimizer", "rmsprop"], 2,
     "static"),                                                                # the blog's README recipe
    ("vaegan", ["--size", 16, "--width", 8, "--batch", 4], None, "static"),
    ("mlp", ["--size", 16], 1, "dygraph"),                            # one image per update; no static step
])
def test_train_step_benchmark_times_every_architecture(arch, sizes, g_steps, path, tmp_path):
    result = run_script("benchmarks/train_step.py", "--arch", arch, *sizes, "--steps", 1, "--warmup", 0,
                        "--repeats", 1, "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    batch = sizes[sizes.index("--batch") + 1] if "--batch" in sizes else 1
    assert (line["arch"], line["size"], line["batch"], line["g_steps"]) == (arch, sizes[1], batch, g_steps)
    assert line["path"] == path and line["img_per_s"] > 0 and line["rates"] == [line["img_per_s"]]


@pytest.mark.parametrize("args, says", [
    (["--arch", "pggan", "--width", 8], "--width does not apply to --arch pggan"),
    (["--arch", "dcgn"], "--arch must be one of dcgan"),
    (["--arch", "vae", "--augment", "ada"], "--augment does not apply to --arch vae"),
    (["--arch", "torchblog", "--balance", "margni"], "--balance must be one of none, margin"),
])
def test_train_step_benchmark_refuses_what_an_architecture_lacks(args, says, tmp_path):
    result = run_script("benchmarks/train_step.py", *args, "--steps", 1, cwd=tmp_path)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_train_step_benchmark_takes_the_augmentation(tmp_path):
    result = run_script("benchmarks/train_step.py", "--size", 16, "--batch", 4, "--width", 8, "--steps", 1,
                        "--warmup", 0, "--repeats", 1, "--device", "cpu", "--augment", "diffaug", "--lecam", 0.1,
                        "--ema", 1, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert (line["augment"], line["lecam"], line["ema"], line["path"]) == ("diffaug", 0.1, 1, "static")


def test_recipes_trains_evaluates_and_tables_each_recipe_once(lfw8, tmp_path):
    args = ["--runs", tmp_path / "runs", "--data", lfw8, "--seeds", "0,1",
            "--recipe", "plain=--epochs 1 --epoch-images 64 --batch-size 16 --width 8 --device cpu",
            "--recipe", "diffaug=--epochs 1 --epoch-images 64 --batch-size 16 --width 8 --device cpu --augment diffaug"]
    result = run_script("benchmarks/recipes.py", *args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    rows = [json.loads(line) for line in lines[:2]]
    assert [r["recipe"] for r in rows] == ["plain", "diffaug"] and all(r["seeds"] == 2 for r in rows)
    assert all(r["swd"]["min"] <= r["swd"]["median"] <= r["swd"]["max"] for r in rows)
    assert lines[2].startswith("| recipe |") and "`--epochs 1" in lines[5]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["diffaug_s0", "diffaug_s1", "plain_s0", "plain_s1"]
    stamp = (tmp_path / "runs" / "plain_s0" / "metrics.json").stat().st_mtime_ns
    again = run_script("benchmarks/recipes.py", *args, cwd=tmp_path)   # done runs are not run again
    assert again.returncode == 0 and again.stdout == result.stdout
    assert (tmp_path / "runs" / "plain_s0" / "metrics.json").stat().st_mtime_ns == stamp


def test_finetune_scores_both_runs_at_each_point_from_a_source_on_the_other_faces(tmp_path):
    args = ["--runs", tmp_path / "runs", "--source-iterations", 2, "--at", "1,2", "--seeds", "0", "--size", 8]
    result = run_script("benchmarks/finetune.py", *args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    rows = [json.loads(line) for line in lines[:4]]
    assert [(r["run"], r["iteration"]) for r in rows] == [("scratch", 1), ("scratch", 2), ("fine-tuned", 1),
                                                          ("fine-tuned", 2)]
    assert all(r["swd_x1e3"] > 0 for r in rows) and lines[4].startswith("| iteration |") and len(lines) == 8
    runs = tmp_path / "runs"
    assert json.load(open(runs / "last50" / "manifest.json"))["count"] == 50
    state = checkpoint.load(str(runs / "fine-tuned_s0" / "checkpoint.pdparams"))
    assert state["config"]["init_from"].endswith("source/checkpoint.pdparams") and state["iteration"] == 2
    assert checkpoint.load(str(runs / "scratch_s0" / "checkpoint.pdparams"))["config"]["init_from"] is None
    bad = run_script("benchmarks/finetune.py", "--at", "ten", cwd=tmp_path)
    assert bad.returncode == 2 and "take numbers like 100,200,400" in bad.stderr.strip().splitlines()[-1]


def test_projection_scores_held_out_and_training_faces_against_random_latents(tmp_path):
    args = ["--runs", tmp_path / "runs", "--arch", "dcgan", "--steps", 3, "--random", 5,
            "--train", "--epochs 1 --epoch-images 32 --width 8 --batch-size 16"]
    result = run_script("benchmarks/projection.py", *args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    rows = [json.loads(line) for line in lines[:2]]
    assert [(r["arch"], r["faces"]) for r in rows] == [("dcgan", "held out"), ("dcgan", "training")]
    assert all(0 < r["projected"]["median"] < 255 and r["beats_best_random"].endswith("/10") for r in rows)
    assert lines[2].startswith("| arch |") and len(lines) == 6
    assert json.load(open(tmp_path / "runs" / "held10" / "manifest.json"))["count"] == 10


def test_recipes_refuses_a_recipe_without_a_name(tmp_path):
    result = run_script("benchmarks/recipes.py", "--recipe", "--augment ada", cwd=tmp_path)
    assert result.returncode == 2 and "NAME=FLAGS" in result.stderr.strip().splitlines()[-1]


def test_profile_step_lists_the_static_programs_ops(tmp_path):
    result = run_script("benchmarks/profile_step.py", "--arch", "torchblog", "--iterations", 1, "--warmup", 1,
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "static step" in result.stdout and "conv2d_grad" in result.stdout
    # the upsampling + convolution fused into a transposed convolution (no expand), which runs as conv2d ops
    assert "expand" not in result.stdout and "conv2d_transpose" not in result.stdout
    bad = run_script("benchmarks/profile_step.py", "--warmup", 0, cwd=tmp_path)
    assert bad.returncode == 2 and "--warmup must be at least 1" in bad.stderr


def test_profile_step_lists_the_exported_generators_ops(tmp_path):
    """--mode generate: Paddle Inference's report of generator.py's path, its ops on oneDNN, the BatchNorm folded."""
    result = run_script("benchmarks/profile_step.py", "--arch", "dcgan", "--mode", "generate", "--iterations", 1,
                        "--warmup", 1, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "inference-onednn" in result.stdout and "onednn_op.conv2d_transpose" in result.stdout
    assert "batch_norm" not in result.stdout


def test_onednn_ops_times_each_op_set_against_the_base_set(tmp_path):
    result = run_script("benchmarks/onednn_ops.py", "--size", 16, "--batch", 4, "--width", 8, "--rounds", 1,
                        "--steps", 1, "--variant", "act=leaky_relu,relu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert set(line["sets"]) == {"base", "act"} and line["sets"]["base"]["ratio_to_base"] == 1.0
    assert line["sets"]["act"]["ops"] == ["conv2d", "conv2d_grad", "leaky_relu", "relu"]
    assert line["sets"]["act"]["img_per_s"] > 0
    for argv, message in ((["--variant", "act=leaky_rleu"], "no Paddle op named leaky_rleu"),
                          (["--variant", "leaky_relu"], "NAME=OP[,OP...]"), ([], "at least one --variant")):
        bad = run_script("benchmarks/onednn_ops.py", *argv, cwd=tmp_path)
        assert bad.returncode == 2 and message in bad.stderr.strip().splitlines()[-1], bad.stderr


def test_frees_benchmark_times_both_ways_of_freeing(tmp_path):
    """benchmarks/frees.py: the same step with one free per op and with batched frees; the first wakes the
    collector thread at every op, which shows as the main thread's involuntary context switches. 30 steps: /proc
    counts CPU time in 10 ms ticks, and the 2 steps this took before (about 30 ms) gave shares from 0 to over 1.5."""
    result = run_script("benchmarks/frees.py", "--arch", "vae", "--steps", 30, "--repeats", 1, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert line["arch"] == "vae" and line["free_in_batches_gb"] > 0
    for way in ("one_by_one", "batched"):
        assert len(line["timings"][way]) == 1 and line["medians"][way]["img_per_s"] > 0
        assert 0 < line["medians"][way]["main_thread_cpu"] <= 1.5
    assert line["ratio_batched_to_one_by_one"] > 0


def test_frees_benchmark_refuses_zero_steps(tmp_path):
    result = run_script("benchmarks/frees.py", "--steps", 0, cwd=tmp_path)
    assert result.returncode == 2 and "--steps and --repeats must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr
