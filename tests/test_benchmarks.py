"""benchmarks/: the scripts run and print the JSON their README promises (numbers are not judged here)."""
import json

import pytest

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


def test_generate_benchmark_prints_one_json_line(tmp_path):
    result = run_script("benchmarks/generate.py", "--size", 16, "--batch", 4, "--width", 8, "--steps", 1,
                        "--warmup", 0, "--repeats", 1, "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip())
    assert line["mode"] == "generate" and line["img_per_s"] > 0
