"""What steers a run from outside its step: signals, several processes, and the divergence check.

- `StopRequest`: SIGINT / SIGTERM ask the loop to stop after the current iteration and save;
  a second Ctrl-C stops at once.
- `Processes`: this process's place among those `python -m paddle.distributed.launch` started,
  the gradient averaging, and the collective answers every process must agree on.
- `weight_checks`, `divergence`: a loss or weight that is no longer finite stops the run, naming
  the network that went first.

Example:
    procs = Processes()                    # one process unless started by paddle.distributed.launch
    with StopRequest() as stop:
        ...; stopping, diverged = procs.any(stop.signal, divergence(stats, checks, ("D", "G")))
"""
import contextlib
import os
import signal
import sys
import threading

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import numpy as np
import paddle


class Diverged(Exception):
    """Training produced a non-finite loss or weight; the message says where and what is kept."""


def weight_checks(nets):
    """{name: the sum of its parameters' means} for a dict of networks: not finite as soon as one parameter is not."""
    return {name: float(paddle.add_n([p.mean() for p in net.parameters()])) for name, net in nets.items()}


def divergence(stats, checks, order):
    """A sentence naming the network that diverged and what became non-finite, or None when all is finite.

    `order` names the networks in the order an iteration updates them: when several numbers
    are bad, the first network whose loss or weights are bad went first (the next one's
    update read its bad weights).
    """
    bad = [f"loss_{name}" for name in order if not np.isfinite(stats[f"loss_{name}"])]
    bad += [f"{name}'s weights" for name in order if not np.isfinite(checks[name])]
    if not bad:
        return None
    which = next(name for name in order if f"loss_{name}" in bad or f"{name}'s weights" in bad)
    return f"{which} diverged: {', '.join(bad)} became non-finite"


class StopRequest:
    """SIGINT / SIGTERM handlers that ask the loop to stop after the current iteration.

    A second Ctrl-C stops at once, without saving (the last checkpoint stays as it was).
    """

    def __init__(self):
        self.signal = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: stopping after this iteration and saving (Ctrl-C again: stop without saving)",
              file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Processes:
    """This process's place among those paddle.distributed.launch started (one when run directly)."""

    def __init__(self):
        self.world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)
        self.rank = 0
        self.replicas = []
        if self.world > 1:
            import paddle.distributed as dist
            dist.init_parallel_env()
            self.rank, self.dist = dist.get_rank(), dist

    @property
    def main(self):
        return self.rank == 0

    def wrap(self, net):
        """paddle.DataParallel(net) with several processes (it starts them from rank 0's weights)."""
        if self.world == 1:
            return net
        replica = paddle.DataParallel(net)
        self.replicas.append(replica)
        return replica

    def no_sync(self):
        """A context in which DataParallel's own gradient hooks are off: `reduce` averages after each backward."""
        stack = contextlib.ExitStack()
        for replica in self.replicas:
            stack.enter_context(replica.no_sync())
        return stack

    def average_gradients(self, parameters):
        """Average the gradients of `parameters` (those one optimizer updates) over the processes."""
        with paddle.no_grad():
            for p in parameters:
                if p.grad is not None:
                    self.dist.all_reduce(p.grad)
                    p.grad.scale_(1.0 / self.world)

    def mean(self, values):
        """The means over the processes of the floats `values` (every process gets the same list)."""
        if self.world == 1:
            return list(values)
        t = paddle.to_tensor([float(v) for v in values])
        self.dist.all_reduce(t)
        return [float(v) / self.world for v in t.numpy()]

    def any(self, *flags):
        """For each flag, whether any process raised it (every process gets the same answer)."""
        if self.world == 1:
            return [bool(f) for f in flags]
        t = paddle.to_tensor([float(bool(f)) for f in flags])
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return [bool(v) for v in t.numpy()]

    def differ(self, *values):
        """For each integer, whether the processes hold different values (every process gets the same answer)."""
        if self.world == 1:
            return [False for _ in values]
        t = paddle.to_tensor([int(v) for v in values] + [-int(v) for v in values], dtype="int64")
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)  # the largest value, and minus the smallest
        top = t.numpy()
        return [bool(most != -least) for most, least in zip(top[:len(values)], top[len(values):])]

    def share_state(self, *nets):
        """Give every process rank 0's weights and BatchNorm statistics (each tracked its own batches)."""
        if self.world > 1:
            for net in nets:
                for value in net.state_dict().values():
                    self.dist.broadcast(value, src=0)
