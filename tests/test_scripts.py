"""Every script: importing it does nothing, --help shows examples."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_script

SCRIPTS = ["pretreat.py", "dataReader.py", "weightInit.py", "network.py", "train.py", "generator.py"]


def test_importing_the_scripts_creates_nothing_and_starts_nothing(tmp_path):
    code = ("import sys, threading; sys.path.insert(0, sys.argv[1]); "
            "import pretreat, dataReader, weightInit, network, balance, checkpoint, faststep, progressive, train, "
            "generator, evaluate; "
            "print(threading.active_count())")
    result = subprocess.run([sys.executable, "-c", code, ROOT], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # no loader thread, no pool
    assert os.listdir(tmp_path) == []
    assert result.stderr == ""  # and no warning either


@pytest.mark.parametrize("script", ["pretreat.py", "dataReader.py", "train.py", "generator.py", "evaluate.py"])
def test_help_shows_examples(script, tmp_path):
    result = run_script(script, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Examples:" in result.stdout and f"python {script}" in result.stdout
    assert os.listdir(tmp_path) == []
