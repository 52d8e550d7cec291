"""Where a training step's (or a generator forward's) time goes, op by op: Paddle's profiler on
train.py's own step, or torch.profiler on ../shared/bench/torch_reference.py's twin of it, at the
same sizes. --mode generate profiles generator.py's path (Paddle Inference's own per-op report,
warm-up runs included) against the twin's eager forward, at benchmarks/generate.py's sizes.

A diagnostic beside versus_torch.py, not a speed target: it prints the profilers' own tables
(Paddle's operator summary, PyTorch's key averages by self time). Profile both frameworks one
after the other and compare each op's share of the total. Paddle writes its trace into
profiler_log/, and Paddle Inference its report also into profile.log (both ignored by git).

Examples:
    python benchmarks/profile_step.py --arch dcgan
    python benchmarks/profile_step.py --arch dcgan --framework torch     # needs pip install torch==2.13.0
    python benchmarks/profile_step.py --arch pggan --iterations 10
    python benchmarks/profile_step.py --arch dcgan --mode generate --iterations 20
    python benchmarks/profile_step.py --arch dcgan --mode generate --framework torch
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
REFERENCE = os.path.join(HERE, "..", "..", "shared", "bench")


def profile_paddle(arch, iterations, warmup):
    import paddle.profiler as profiler
    import train_step
    step, cfg, path, _ = train_step.prepare(train_step.StepBenchConfig(arch=arch, device="cpu"))
    print(f"paddle {arch} {cfg.size}x{cfg.size}, batch {cfg.batch}, {path} step, {iterations} iterations")
    for _ in range(warmup):
        step()
    p = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU])
    p.start()
    for _ in range(iterations):
        step()
    p.stop()
    p.summary(sorted_by=profiler.SortedKeys.CPUTotal, op_detail=False, thread_sep=False, time_unit="ms")


def profile_paddle_generate(arch, iterations, warmup):
    import gc
    import generate
    cfg = generate.GenBenchConfig(arch=arch)
    G, z = generate.build(cfg)
    size = G.args["size"]
    with generate.generator_path(cfg, G, profile=True) as (forward, path):
        print(f"paddle {arch} {size}x{size} generator, batch {cfg.batch}, {path}, {warmup} + {iterations} forwards",
              flush=True)
        for _ in range(warmup + iterations):
            forward(z)
    del forward   # the last reference to the predictor, which prints its report as it is freed
    gc.collect()


def profile_torch_generate(arch, iterations, warmup):
    sys.path.insert(0, REFERENCE)
    import torch
    import torch_reference as tr
    from torch.profiler import ProfilerActivity, profile
    a = tr.parse_args(["generate", "--arch", arch, "--batch", "64"])   # generate.py's batch
    torch.manual_seed(0)
    G, _ = tr.build(a)
    G.eval()
    z_shape = (a.batch, a.z_dim, 1, 1) if arch == "dcgan" else (a.batch, a.z_dim)
    print(f"torch {arch} {a.size}x{a.size} generator, batch {a.batch}, {iterations} forwards")
    with torch.no_grad():
        for _ in range(warmup):
            G(torch.randn(*z_shape))
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(iterations):
                G(torch.randn(*z_shape))
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def profile_torch(arch, iterations, warmup):
    sys.path.insert(0, REFERENCE)
    import copy

    import torch
    import torch_reference as tr
    from torch.profiler import ProfilerActivity, profile
    a = tr.parse_args(["train", "--arch", arch])
    torch.manual_seed(0)
    G, D = tr.build(a)
    real = torch.rand(a.batch, 3, a.size, a.size) * 2 - 1
    if arch == "pggan":
        G_ema = copy.deepcopy(G)
        opt_G, opt_D = (torch.optim.Adam(n.parameters(), 1e-3, betas=(0.0, 0.99), eps=1e-8) for n in (G, D))
        count = [0]

        def step():
            tr.pggan_iteration(G, D, G_ema, opt_G, opt_D, real, a.z_dim, count[0])
            count[0] += 1
    elif arch == "torchblog":
        opt_G, opt_D = (torch.optim.Adam(n.parameters(), 2e-4, betas=(0.5, 0.999)) for n in (G, D))

        def step():
            tr.torchblog_iteration(G, D, opt_G, opt_D, real, a.z_dim, a.g_steps)
    else:  # the reference's own dcgan step (its main), one G update
        opt_G, opt_D = (torch.optim.Adam(n.parameters(), 2e-4, betas=(0.5, 0.999)) for n in (G, D))
        bce = torch.nn.BCEWithLogitsLoss()
        ones, zeros = torch.ones(a.batch, 1, 1, 1), torch.zeros(a.batch, 1, 1, 1)

        def step():
            fake = G(torch.randn(a.batch, a.z_dim, 1, 1))
            loss_D = bce(D(real), ones) + bce(D(fake.detach()), zeros)
            opt_D.zero_grad()
            loss_D.backward()
            opt_D.step()
            loss_G = bce(D(fake), ones)
            opt_G.zero_grad()
            loss_G.backward()
            opt_G.step()
    print(f"torch {arch} {a.size}x{a.size}, batch {a.batch}, {iterations} iterations")
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(iterations):
            step()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["dcgan", "torchblog", "pggan"], default="dcgan",
                        help="an architecture the reference has a twin of (default: dcgan)")
    parser.add_argument("--framework", choices=["paddle", "torch"], default="paddle")
    parser.add_argument("--mode", choices=["train", "generate"], default="train",
                        help="a training step, or a generator forward at batch 64 (default: train)")
    parser.add_argument("--iterations", type=int, default=4, help="profiled iterations (default: 4)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="unprofiled iterations first, at least 1: Paddle's profiler lists no ops of a "
                             "program's first run (default: 2)")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 1:
        parser.error("--iterations and --warmup must be at least 1")
    if args.framework == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            parser.exit(2, f"{parser.prog}: error: PyTorch is not installed; pip install torch==2.13.0 (never a "
                           "dependency of this project)\n")
        if not os.path.exists(os.path.join(REFERENCE, "torch_reference.py")):
            parser.exit(2, f"{parser.prog}: error: no PyTorch reference in {REFERENCE}\n")
        (profile_torch if args.mode == "train" else profile_torch_generate)(args.arch, args.iterations, args.warmup)
    else:
        import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
        (profile_paddle if args.mode == "train" else profile_paddle_generate)(args.arch, args.iterations, args.warmup)


if __name__ == "__main__":
    main()
