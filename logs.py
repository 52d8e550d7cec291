"""What a run shows: the JSONL log, the plots, and progress on a terminal or in a log file.

- `RunLog`: log.jsonl, one JSON record per line, appended as training goes; a resumed run
  keeps the records up to its checkpoint and drops the rest.
- `Interval`: the mean of each number over the iterations since the last record, and img/s.
- `save_figure`, `plot_curves`, `plot_monitor`: matplotlib (Agg, no display), written as PNG
  atomically.
- `write_movie`: progress.gif, the fixed-noise sample grids as an animation (the Torch blog's
  training video), at most MOVIE_FRAMES of them spread over the run.
- `progress`: a tqdm bar on a terminal. When stderr is a file or a pipe (nohup, CI, a cluster
  job) a bar's carriage-return updates would fill the log, so it prints a plain line when the
  work starts and then every PLAIN_EVERY seconds instead.

No Paddle here: pretreat.py uses `progress` too.

Example:
    for batch in progress(loader, desc="epoch 1/8", total=len(loader), unit="it"):
        ...
"""
import io
import json
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from facedata import write_atomic, write_gif

PLAIN_EVERY = 30.0   # seconds between plain progress lines when stderr is not a terminal


# ----------------------------------------------------------------------------- log.jsonl

class RunLog:
    """log.jsonl of a run: records of the training numbers, and of evaluations (with swd_x1e3)."""

    def __init__(self, path):
        self.path = path
        self.losses, self.evaluations = [], []

    def restart(self, iteration=None):
        """Rewrite the file with the records up to `iteration` (a resumed run's), or none; keep them in memory."""
        records = []
        if iteration is not None and os.path.exists(self.path):
            with open(self.path) as f:
                records = [r for r in map(json.loads, filter(str.strip, f)) if r["iteration"] <= iteration]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records).encode())
        self.losses = [r for r in records if "swd_x1e3" not in r]
        self.evaluations = [r for r in records if "swd_x1e3" in r]

    def append(self, record):
        """Add one record to the file and to the history it belongs to."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        (self.evaluations if "swd_x1e3" in record else self.losses).append(record)


class Interval:
    """The iterations since the last log record: their numbers, images and time."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.stats, self.images, self.start = [], 0, time.perf_counter()

    def add(self, stats, images):
        self.stats.append(stats)
        self.images += images

    def means(self):
        """{name: mean over the interval, rounded to 5 decimals} of every number the steps returned."""
        return {k: round(float(np.mean([s[k] for s in self.stats])), 5) for k in self.stats[0]}

    def rate(self):
        return round(self.images / (time.perf_counter() - self.start), 2)


# ----------------------------------------------------------------------------- plots

def save_figure(fig, path):
    """Write a matplotlib Figure to `path` as PNG, atomically."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())


def plot_curves(history, keys, ylabel, path):
    """Write the `keys` of the records in `history` over iterations to a PNG (no display needed)."""
    from matplotlib.figure import Figure  # imported here: only plotting needs it

    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    its = [r["iteration"] for r in history]
    for key, label in keys.items():
        ax.plot(its, [r[key] for r in history], label=label, marker="o" if len(history) < 30 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_monitor(history, band, path, gen="gen: BCE(D(G(z)), real), low when G fools D"):
    """The Torch blog's monitor: D's errors on reals and fakes and G's loss (`gen` labels it), the band (low, high)
    of D errors in which the balancing rule skips nothing, and the skipped updates."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    its = [r["iteration"] for r in history]
    marker = "o" if len(history) < 30 else None
    curves = [("err_F", "fake: BCE(D(G(z)), fake), low when D spots fakes"),
              ("err_R", "real: BCE(D(x), real), low when D knows reals")]
    for key, label in ([("loss_G", gen)] if gen else []) + curves:
        top.plot(its, [r.get(key, np.nan) for r in history], label=label, marker=marker)
    top.axhspan(*band, color="0.85", label=f"band of no skips ({band[0]:g}, {band[1]:g})")
    top.set_ylabel("BCE")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    for key, label in (("d_skips", "D updates skipped"), ("g_skips", "G updates skipped")):
        bottom.plot(its, [r.get(key, 0) for r in history], label=label, marker=marker)
    bottom.set_xlabel("iteration")
    bottom.set_ylabel("skipped (total)")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- the training movie

MOVIE_FRAMES = 100   # at most this many sample grids in progress.gif, spread over the whole run
MOVIE_MS = 200       # per frame


def movie_frames(count, limit=MOVIE_FRAMES):
    """Which of `count` sample grids the movie shows: all of them up to `limit`, else `limit` of them
    spread evenly over the run, the first and the last included, so its size stays bounded."""
    if count <= limit:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, limit).round()})


def write_movie(samples, path):
    """progress.gif at `path` from the sample grids (PNGs) in the folder `samples`, in the order of their names
    (epoch, then iteration); grids drawn at smaller stages are enlarged to the largest."""
    import cv2

    names = sorted(f for f in os.listdir(samples) if f.endswith(".png"))
    frames = [cv2.imread(os.path.join(samples, names[i]))[..., ::-1] for i in movie_frames(len(names))]
    side = max(f.shape[0] for f in frames)
    frames = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_NEAREST) for f in frames])
    write_gif(path, frames, MOVIE_MS)


# ----------------------------------------------------------------------------- progress

class PlainProgress:
    """tqdm's interface, printing one plain line to stderr every PLAIN_EVERY seconds instead of a bar."""

    def __init__(self, iterable=None, desc="", total=None, unit="it", initial=0, disable=False):
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.n, self.start, self.disable, self.postfix = initial, initial, disable, ""
        self.t0 = self.shown = time.monotonic()
        self.show()  # the work has begun, and how much of it there is

    def show(self):
        if not self.disable:
            rate = (self.n - self.start) / max(self.shown - self.t0, 1e-9)
            of = f"/{self.total}" if self.total is not None else ""
            print(f"{self.desc}: {self.n}{of} {self.unit}"
                  + (f", {rate:.3g} {self.unit}/s{self.postfix}" if self.n > self.start else ""), file=sys.stderr)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.shown >= PLAIN_EVERY:
            self.shown = now
            self.show()

    def set_postfix(self, refresh=True, **values):
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self):
        pass


def progress(iterable=None, **kwargs):
    """A tqdm bar when stderr is a terminal, else PlainProgress (same arguments: desc, total, unit, initial,
    disable)."""
    if sys.stderr.isatty():
        return tqdm(iterable, leave=False, **kwargs)
    return PlainProgress(iterable, **kwargs)
