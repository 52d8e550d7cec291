"""Prepare this process for Paddle: imported first by every module that imports Paddle.

Paddle sets OMP_NUM_THREADS=1 when it loads unless the variable is already set, so it
would use one core; and the MKL in the Paddle wheel takes a slow generic path on AMD CPUs
unless MKL_DEBUG_CPU_TYPE=5 is set before it loads (a 1024^2 matmul here: 27 -> 80 GFLOP/s).
Both only work before `import paddle`, so this module sets them and then imports Paddle
itself, never overriding what the user set. Processes started by paddle.distributed.launch
share the cores. Paddle's C++ INFO and warning log lines (such as the export's "Paddle static graph(PIR) not
support input out tensor for now!!!!!", which no user can act on) are off unless GLOG_minloglevel is set. It
also drops two import-time messages that do not apply here: ccache
(for building C++ extensions) and "OMP_NUM_THREADS set to N, not 1" (about OpenBLAS builds
and data-parallel runs; this MKL build runs threads fine, and launched processes divide the
cores).

It also holds what every script that runs Paddle shares: the --device option, choosing the
device, and ConfigError, the exception for options that cannot work.

Example:
    OMP_NUM_THREADS=1 python train.py      # your own setting wins
"""
import contextlib
import io
import os
import sys
import warnings


def cpu_info(path="/proc/cpuinfo"):
    """(vendor string such as 'AuthenticAMD', set of instruction-set flags) of the first CPU in `path` (Linux);
    ('', set()) where there is no such file."""
    vendor, flags = "", set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    vendor = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if vendor and flags:
                    break
    except OSError:
        pass
    return vendor, flags


def cpu_vendor():
    """The CPU vendor string ('AuthenticAMD', 'GenuineIntel', ...) on Linux, else ''."""
    return cpu_info()[0]


def thread_settings(environ, cpus, vendor):
    """The environment variables to add before Paddle loads: only those the user has not set."""
    settings = {}
    if "OMP_NUM_THREADS" not in environ:
        processes = int(environ.get("PADDLE_TRAINERS_NUM", "1") or 1)  # set by paddle.distributed.launch
        settings["OMP_NUM_THREADS"] = str(max(1, cpus // max(1, processes)))
    if vendor == "AuthenticAMD" and "MKL_DEBUG_CPU_TYPE" not in environ:
        settings["MKL_DEBUG_CPU_TYPE"] = "5"  # MKL's AVX2 path, which it gives only to Intel CPUs otherwise
    return settings


def _import_paddle():
    """Import Paddle, passing on what it prints to stderr except its OMP_NUM_THREADS advice."""
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        import paddle  # noqa: F401
    noise = ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY")
    sys.stderr.write("".join(line for line in captured.getvalue().splitlines(keepends=True)
                             if not line.startswith(noise)))


warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
if "paddle" not in sys.modules:  # once Paddle is loaded, these variables no longer matter
    os.environ.update(thread_settings(os.environ, os.cpu_count() or 1, cpu_vendor()))
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO and warning lines off; its errors stay
    _import_paddle()


# ----------------------------------------------------------------------------- device

DEVICES = ("auto", "cpu", "gpu")   # the --device option of every script
DEVICE_HELP = "auto picks the GPU when paddlepaddle-gpu sees one, else the CPU"


# The Paddle releases the test suite passed on. The static CPU training step (faststep.py, Paddle's private
# legacy-program API) and generation's Paddle Inference path (known to fail on 3.2.2) run only on these;
# elsewhere training takes the eager step and generation eager mode, each saying so in one line.
TESTED_PADDLE = ("3.3.1",)


def untested_paddle(version):
    """Why `version` of Paddle is not trusted with the fast paths (None when it is)."""
    if version in TESTED_PADDLE:
        return None
    return f"it is tested on Paddle {', '.join(TESTED_PADDLE)}, not {version}"


class ConfigError(Exception):
    """Options that cannot work with this dataset or machine; the message says what to change."""


def select_device(name):
    """Set and return Paddle's device: 'gpu' when asked or when auto finds one, else 'cpu'."""
    import paddle

    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if name == "gpu" and not has_gpu:
        raise ConfigError("--device gpu, but this Paddle sees no GPU: install paddlepaddle-gpu "
                          "(see README) or use --device cpu")
    device = "gpu" if name == "gpu" or (name == "auto" and has_gpu) else "cpu"
    paddle.set_device(device)
    return device
