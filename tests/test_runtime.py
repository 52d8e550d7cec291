"""runtime.py: thread and MKL settings before Paddle loads, never over the user's own."""
import os
import subprocess
import sys

import pytest

import runtime
from conftest import ROOT


@pytest.mark.parametrize("environ, cpus, vendor, expected", [
    ({}, 2, "AuthenticAMD", {"OMP_NUM_THREADS": "2", "MKL_DEBUG_CPU_TYPE": "5"}),
    ({}, 8, "GenuineIntel", {"OMP_NUM_THREADS": "8"}),
    ({"OMP_NUM_THREADS": "1"}, 8, "AuthenticAMD", {"MKL_DEBUG_CPU_TYPE": "5"}),
    ({"MKL_DEBUG_CPU_TYPE": "4"}, 4, "AuthenticAMD", {"OMP_NUM_THREADS": "4"}),
    ({"OMP_NUM_THREADS": "3", "MKL_DEBUG_CPU_TYPE": "5"}, 4, "AuthenticAMD", {}),
    ({}, 0, "", {"OMP_NUM_THREADS": "1"}),
    ({"PADDLE_TRAINERS_NUM": "2"}, 8, "", {"OMP_NUM_THREADS": "4"}),   # launched processes share the cores
    ({"PADDLE_TRAINERS_NUM": "4"}, 2, "", {"OMP_NUM_THREADS": "1"}),
])
def test_thread_settings(environ, cpus, vendor, expected):
    assert runtime.thread_settings(environ, cpus, vendor) == expected


def paddle_env(**env):
    """OMP_NUM_THREADS and MKL_DEBUG_CPU_TYPE as a fresh process sees them after importing dataReader."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import dataReader; "
            "print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('MKL_DEBUG_CPU_TYPE'))")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    result = subprocess.run([sys.executable, "-c", code, ROOT], env={**clean, **env},
                            capture_output=True, text=True, check=True)
    assert result.stderr == ""  # Paddle's OMP_NUM_THREADS advice is dropped
    return result.stdout.split()


def test_every_core_unless_the_user_says_otherwise():
    omp, mkl = paddle_env()
    assert omp == str(os.cpu_count())
    assert mkl == ("5" if runtime.cpu_vendor() == "AuthenticAMD" else "None")
    assert paddle_env(OMP_NUM_THREADS="1", MKL_DEBUG_CPU_TYPE="2") == ["1", "2"]
