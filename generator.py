"""Generate faces with a generator trained by train.py.

Rebuilds the generator from the checkpoint alone (its architecture and arguments are stored
in it) and writes --num faces as 0000.png, 0001.png, ... plus grid.png (the first 100) to
--out. The same --seed gives the same faces; without one a seed is drawn and printed.

On the CPU it generates through Paddle Inference with oneDNN: the generator is exported with
paddle.jit.save once, into generator_export/ beside the checkpoint (again when the checkpoint
changes), and runs in bfloat16 where the CPU has avx512_bf16 and the faces then stay within
one grey level of float32. That is 4-7x faster than Paddle's eager mode here.

Examples:
    python generator.py                                  # 100 faces -> Generate/
    python generator.py --num 16 --seed 7 --out faces/
    python generator.py --checkpoint runs/celeba/checkpoint.pdparams --num 1000
    python generator.py --export deploy/generator        # the deployable model, for paddle.inference
    python generator.py --seeds 1,5,9                    # exactly these seeds' faces: seed0001.png ...
    python generator.py --walk 8 --seed 3                # walk.gif: a loop through 8 latent points
    python generator.py --walk-ones                      # walk_ones.gif: a block of 1s slid along z
    python generator.py --truncation 0.7 --seed 0        # the same faces, nearer the average face
    python generator.py --morph Generate/seed0001.npy Generate/seed0005.npy   # morph.gif: from face to face and back
    python generator.py --checkpoint runs/vae/checkpoint.pdparams --reconstruct 16  # beside their reconstructions
"""
import contextlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass

import runtime  # before Paddle: thread and MKL settings; the device option
import numpy as np
import paddle

import checkpoint
import network
from checkpoint import READABLE, CheckpointError
from facedata import (DatasetError, FaceDataset, enlarge, grid_scale, make_grid, to_float, to_uint8, write_atomic,
                      write_gif, write_json, write_png)
from logs import progress
from network import sample
from options import at_least, build_parser, option, parse, refusing

GRID_MAX = 100    # faces shown in grid.png
BATCH = 256       # faces generated per forward pass


def truncation_problem(psi):
    return None if 0 < psi <= 1 else f"must be above 0 and at most 1, got {psi:g}"


def seeds_problem(text):
    try:
        parse_seeds(text)
    except ValueError as e:
        return f"{text}: {e}"
    return None


ONES_BLOCK = 10   # --walk-ones: consecutive 1s in z
ONES_STEP = 5     # and how far they move per frame


@dataclass
class GenerateConfig:
    checkpoint: str = option("output/checkpoint.pdparams", "checkpoint written by train.py")
    out: str = option("Generate", "folder for the PNGs (the tutorial's)")
    num: int = option(100, "faces to write", at_least(1))
    seed: int = option(None, "same seed, same faces (default: drawn at random and printed)", at_least(0))
    device: str = option("auto", runtime.DEVICE_HELP, choices=runtime.DEVICES)
    engine: str = option("auto", "inference: Paddle Inference with oneDNN (CPU); dygraph: Paddle's eager mode; auto: "
                         "inference on the CPU where the architecture allows it, falling back to dygraph with a "
                         "message", choices=("auto", "inference", "dygraph"))
    export: str = option(None, "also write the deployable model (paddle.jit.save) to this path prefix")
    seeds: str = option(None, "write exactly these seeds' faces, one per seed (seedSSSS.png, and its z as "
                        "seedSSSS.npy, for --morph), as 1,5,9 or 0-99; a face depends on its seed alone",
                        seeds_problem)
    walk: int = option(None, "write walk.gif and its frames (walk/): a looping walk through this many random latent "
                       "points (from --seed), by spherical interpolation, back to the first", at_least(2))
    morph: list = option(None, "write morph.gif and its frames (morph/): a looping walk through these latents "
                         "(.npy files of one z each, as --seeds writes), by --walk's interpolation, back to the "
                         "first", metavar="LATENT.npy")
    walk_ones: bool = option(False, "write walk_ones.gif and its frames (walk_ones/): the \"Make Your Own GAN\" "
                             f"series' animation, z all 0 but a block of {ONES_BLOCK} consecutive 1s, slid along z in "
                             f"steps of {ONES_STEP}")
    reconstruct: int = option(None, "architectures with an encoder (vae, vaegan): write reconstruct.png, this many "
                              "real faces of --data (drawn with --seed) each beside its reconstruction", at_least(1))
    data: str = option("data", "dataset folder written by pretreat.py, for --reconstruct")
    truncation: float = option(1.0, "faces nearer the average face, less varied and cleaner: every z scaled by this "
                               "PSI (0 < PSI <= 1; 1: as trained), for --num, --seeds and the walks; not pggan "
                               "(its G normalises z)", truncation_problem)


EXPORT_DIR = "generator_export"   # beside the checkpoint
WALK_FRAMES = 24                  # frames from one latent point to the next
WALK_MS = 80                      # per frame: 24 frames take about 2 seconds



def load_generator(path):
    """(the network faces are drawn with, in inference mode; checkpoint dict), rebuilt from the checkpoint alone.

    The checkpoint names the architecture and its arguments, which of the method's networks
    samples (a progressive GAN's moving average, say) and at what stage.
    """
    state = checkpoint.load(path, formats=READABLE)
    weights, role, stage = checkpoint.sampler(state)
    try:
        G = network.build_net(state["arch"], role, state["arch_args"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} describes a generator this version cannot build ({e})")
    missing, unexpected = G.set_state_dict(state[weights])
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its {state['arch']} generator "
                              f"(missing {len(missing)}, unexpected {len(unexpected)} weights)")
    if stage is not None:  # saved mid-training: it draws at the stage it had reached
        G.set_stage(**stage)
    G.eval()
    return G, state


def load_encoder(path, state):
    """The checkpoint's encoder ("E"), in inference mode; CheckpointError for an architecture without one."""
    if "E" not in network.architecture(state["arch"]).networks:
        raise CheckpointError(f"{path} holds a {state['arch']} network, which has no encoder to reconstruct with: "
                              "--reconstruct needs an autoencoder (--arch "
                              f"{' or '.join(a for a, e in network.ARCHITECTURES.items() if 'E' in e.networks)})")
    E = network.build_net(state["arch"], "E", state["arch_args"])
    E.set_state_dict(state["E"])
    E.eval()
    return E


def reconstruct(E, G, faces):
    """uint8 N x H x W x 3 reconstructions of uint8 faces: decoded from the mean of their encoding."""
    with paddle.no_grad():
        mean, _ = E(paddle.to_tensor(to_float(faces)))
    return sample(G, mean.numpy())


def untrained_like(G, state, seed):
    """The checkpoint's sampling network as it was before training: freshly built from `seed`, in inference mode."""
    paddle.seed(seed)
    untrained = network.build_net(state["arch"], checkpoint.sampler(state)[1], state["arch_args"])
    untrained.eval()
    return untrained


def truncate(z, psi):
    """The truncation trick for z ~ N(0, I) fed to G as it is: z scaled by `psi` towards the average latent, 0 (psi 1:
    z itself). Faces nearer the average face, less varied; a G that normalises z has another place for it or none
    (network.Architecture.truncation_problem)."""
    return z if psi == 1 else (z * np.float32(psi)).astype(np.float32)


def draw(G, z, forward=None, psi=1.0):
    """uint8 N x H x W x 3 faces for the float32 noise rows `z` (truncated by `psi`); each face depends on its own
    row alone. `forward` maps float32 noise to uint8 faces; by default G in eager mode.
    """
    z = truncate(z, psi)
    forward = forward or (lambda batch: sample(G, batch))
    faces = np.concatenate([forward(z[i:i + BATCH])
                            for i in progress(range(0, len(z), BATCH), desc="generate", unit="batch",
                                              total=-(-len(z) // BATCH), disable=len(z) <= BATCH)])
    return enlarge(faces, G.args["size"])  # a G drawing below its final size (an early stage): shown upsampled


def generate(G, num, seed, forward=None, psi=1.0):
    """`num` faces as uint8 N x H x W x 3, a pure function of (G, num, seed, psi)."""
    z = np.random.default_rng(seed).standard_normal((num, G.args["z_dim"])).astype(np.float32)
    return draw(G, z, forward, psi)


# ----------------------------------------------------------------------------- seeds and walks

def parse_seeds(text):
    """'1,5,9' or '0-3,7' -> [1, 5, 9] or [0, 1, 2, 3, 7]; ValueError saying what is wrong."""
    seeds = []
    for item in text.split(","):
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or (high and int(high) < int(low)):
            raise ValueError(f"{item!r} is not a seed or a range like 0-9")
        seeds += list(range(int(low), int(high or low) + 1))
    return seeds


def seed_noise(seeds, z_dim):
    """One noise row per seed, a function of that seed alone: --seeds 5 draws the face --seeds 0-9 draws for 5."""
    return np.stack([np.random.default_rng(s).standard_normal(z_dim) for s in seeds]).astype(np.float32)


def slerp(a, b, t):
    """Spherical interpolation from noise `a` to `b` at fraction `t` (linear where they are parallel)."""
    cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def write_latent(path, z):
    """One z as an .npy file (atomically), as --morph reads it."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(z, np.float32))
    write_atomic(path, buffer.getvalue())


def read_latents(paths, z_dim):
    """The latents of .npy files, one z of `z_dim` numbers each (as --seeds writes them), as rows; ConfigError for
    a file that is missing or holds another shape."""
    rows = []
    for path in paths:
        try:
            z = np.load(path)
        except (OSError, ValueError) as e:
            raise runtime.ConfigError(f"cannot read latent {path} ({e}): give .npy files as --seeds writes")
        if z.size != z_dim or not np.issubdtype(z.dtype, np.floating):
            raise runtime.ConfigError(f"{path} holds {z.size} {z.dtype} numbers, not the {z_dim} floats of one z "
                                      "this generator takes: write them with this checkpoint (--seeds)")
        rows.append(z.reshape(z_dim))
    return np.stack(rows).astype(np.float32)


def walk_noise(points, frames):
    """`frames` noise rows per step through the rows of `points` and back to the first, a closed loop."""
    steps = [slerp(points[i], points[(i + 1) % len(points)], t)
             for i in range(len(points)) for t in np.arange(frames) / frames]
    return np.stack(steps).astype(np.float32)


def ones_noise(z_dim, block=ONES_BLOCK, step=ONES_STEP):
    """The series' walk: rows of zeros but `block` consecutive ones, the block starting at 0, step, 2 step, ...
    as long as it fits in z (one row, all ones, where z is shorter than the block)."""
    block = min(block, z_dim)
    starts = np.arange(0, z_dim - block + 1, step)[:, None]
    return ((np.arange(z_dim) >= starts) & (np.arange(z_dim) < starts + block)).astype(np.float32)


# ----------------------------------------------------------------------------- fast path

def export_form(G):
    """G as it is exported: a network with forms is rebuilt in its "export" form with G's weights (and PG-GAN's
    stage): PG-GAN's nearest upsampling as a reshape and a broadcast (Paddle Inference 3.3's oneDNN path cannot run
    nearest_interp: "ConvertPirAttribute2RuntimeAttribute not support"), its pixel norm's channel mean as a 1x1
    convolution, and, there and in the Torch blog's G, each upsampling + convolution as one transposed convolution
    of the small image (network.PGGAN_FORMS, network.upsample_block). Another network is G itself."""
    if not hasattr(G, "form"):
        return G
    rng = paddle.get_rng_state()   # building draws initial weights: leave Paddle's generator where it was
    exported = type(G)(**G.args, form="export")
    paddle.set_rng_state(rng)
    exported.set_state_dict(G.state_dict())
    if hasattr(G, "set_stage"):
        exported.set_stage(G.res, G.alpha)
    return exported


def export(G, prefix):
    """paddle.jit.save G (inference mode) at `prefix`; returns the model file written."""
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    G = export_form(G)
    G.eval()
    paddle.jit.save(G, prefix, input_spec=[paddle.static.InputSpec([None, G.args["z_dim"]], "float32")])
    for suffix in (".json", ".pdmodel"):  # Paddle 3 writes .json (PIR), older versions .pdmodel
        if os.path.exists(prefix + suffix):
            return prefix + suffix
    raise OSError(f"paddle.jit.save wrote no model file at {prefix}")


def has_bf16():
    """True where the CPU computes bfloat16 natively (avx512_bf16 or AMX)."""
    flags = runtime.cpu_info()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


class InferenceGenerator:
    """G exported and run by Paddle Inference with oneDNN; call it with float32 noise for uint8 faces."""

    def __init__(self, model_file, params_file, bf16=False, profile=False):
        """profile: Paddle Inference's per-op times, printed to stdout when the predictor is deleted
        (benchmarks/profile_step.py --mode generate)."""
        import paddle.inference as inference

        config = inference.Config(model_file, params_file)
        config.disable_glog_info()
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        config.enable_mkldnn()
        # Paddle 3.3 crashes (a segfault) building a predictor where a convolution with a bias is followed by a
        # leaky ReLU, in this pass's FusedConv2dOp (PG-GAN's G; the smallest program: F.conv2d(x, w, b) then
        # F.leaky_relu(y, 0.2)). Without the pass the activation runs as its own oneDNN op.
        config.delete_pass("conv_activation_onednn_fuse_pass")
        if bf16:
            config.enable_mkldnn_bfloat16()
        if profile:
            config.enable_profile()
        self.bf16 = bf16
        self.predictor = inference.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def __call__(self, z):
        self.input.copy_from_cpu(np.ascontiguousarray(z, np.float32))
        with silent_stdout():
            self.predictor.run()
        return to_uint8(self.output.copy_to_cpu())


@contextlib.contextmanager
def silent_stdout():
    """Within the block, nothing reaches file descriptor 1: Paddle Inference 3.3 prints a debugging line,
    "ReduceMeanCheckIfOneDNNSupport", from C++ for each mean it checks (PG-GAN's pixel norm) on a first run."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def one_line(error):
    """`error` as one line for a message: Paddle's C++ errors add hints, file positions and at times a C++ traceback
    around the line that says what went wrong ("InvalidArgumentError: ..." in the traceback's summary)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip().strip("-")]
    summary = next((line for line in lines if re.match(r"\w+Error: ", line)), lines[0] if lines else "")
    summary = re.sub(r"\s*\[Hint: .*$", "", summary)
    return f"{type(error).__name__}: {summary}"


def fast_generator(G, checkpoint, profile=False):
    """An InferenceGenerator for G, exporting it beside `checkpoint` unless that export is current.

    bf16 is used where the CPU has it and faces from a fixed noise batch then stay within one
    grey level of G's own; that check runs once per export and is stored with it.
    """
    folder = os.path.join(os.path.dirname(checkpoint) or ".", EXPORT_DIR)
    stamp_path = os.path.join(folder, "export.json")
    st = os.stat(checkpoint)
    source = {"checkpoint": os.path.abspath(checkpoint), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    stamp = None
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            stamp = json.load(f)
    def files(name):  # (model, parameters) inside the export folder
        return os.path.join(folder, name), os.path.join(folder, name.rsplit(".", 1)[0] + ".pdiparams")

    if stamp is None or stamp.get("source") != source or not os.path.exists(files(stamp["model"])[0]):
        model = os.path.basename(export(G, os.path.join(folder, "generator")))
        z = np.random.default_rng(12345).standard_normal((64, G.args["z_dim"])).astype(np.float32)
        expected = sample(G, z).astype(int)
        bf16_ok = has_bf16() and np.abs(InferenceGenerator(*files(model), bf16=True)(z) - expected).max() <= 1
        stamp = {"source": source, "model": model, "bf16": bool(bf16_ok)}
        write_json(stamp_path, stamp)  # last: it marks the export complete
    return InferenceGenerator(*files(stamp["model"]), bf16=stamp["bf16"], profile=profile)


def choose_engine(cfg, G, state, device, parser):
    """(forward, engine's name) for draw: Paddle Inference on the CPU where --engine and the architecture allow it
    (forward None: eager mode). A user's impossible choice exits with one line; a known fallback says so in one."""
    inference = network.architecture(state["arch"]).inference
    if cfg.engine == "inference" and device != "cpu":
        parser.exit(2, f"{parser.prog}: error: --engine inference runs on the CPU; add --device cpu\n")
    if cfg.engine == "inference" and not inference:
        parser.exit(2, f"{parser.prog}: error: --engine inference does not run --arch {state['arch']} "
                       f"(Paddle Inference fails to build it; see network.ARCHITECTURES); use --engine dygraph\n")
    forward, engine = None, "dygraph"
    untested = runtime.untested_paddle(paddle.__version__)
    if cfg.engine == "inference" and untested:
        parser.exit(2, f"{parser.prog}: error: --engine inference cannot run: {untested}; use --engine dygraph\n")
    if cfg.engine == "auto" and device == "cpu" and inference and untested:
        print(f"generating in eager mode: Paddle Inference is off because {untested}", file=sys.stderr)
    elif cfg.engine == "inference" or (cfg.engine == "auto" and device == "cpu" and inference):
        try:
            forward = fast_generator(G, cfg.checkpoint)
            engine = "Paddle Inference, oneDNN, " + ("bfloat16" if forward.bf16 else "float32")
        except (OSError, RuntimeError, ValueError) as e:
            if cfg.engine == "inference":
                parser.exit(2, f"{parser.prog}: error: cannot export the generator for Paddle Inference "
                               f"({one_line(e)})\n")
            print(f"Paddle Inference unavailable ({one_line(e)}); generating in eager mode", file=sys.stderr)
    return forward, engine


def main(argv=None):
    parser = build_parser(GenerateConfig, __doc__)
    cfg = parse(GenerateConfig, parser, argv)
    if sum(v is not None for v in (cfg.walk, cfg.morph, cfg.seeds, cfg.reconstruct)) + cfg.walk_ones > 1:
        parser.error("--walk, --morph, --walk-ones, --seeds and --reconstruct write different things: give one of them")
    if cfg.morph is not None and len(cfg.morph) < 2:
        parser.error("--morph needs at least 2 latent files, to go from one to the other")
    with refusing(parser, CheckpointError, runtime.ConfigError, DatasetError):
        device = runtime.select_device(cfg.device)
        G, state = load_generator(cfg.checkpoint)
        check_truncation(cfg.truncation, state["arch"], cfg.reconstruct)
        latents = read_latents(cfg.morph, G.args["z_dim"]) if cfg.morph else None
        if cfg.reconstruct:
            E = load_encoder(cfg.checkpoint, state)
            dataset = FaceDataset(cfg.data, size=G.args["size"])
    forward, engine = choose_engine(cfg, G, state, device, parser)
    if cfg.export:
        print(f"exported the generator to {export(G, cfg.export)}", file=sys.stderr)
    seed = cfg.seed if cfg.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    os.makedirs(cfg.out, exist_ok=True)
    where = f"epoch {state['epoch']} of {state['config']['epochs']}, {engine}"
    if cfg.reconstruct:
        count, error, own = write_reconstructions(E, G, dataset, cfg.reconstruct, seed, cfg.out)
        print(f"wrote reconstruct.png to {cfg.out}: {count} faces of {cfg.data} (seed {seed}), each beside its "
              f"reconstruction ({where}); mean error {error:.1f} grey levels, {own:.0%} nearer their own face than "
              f"any other of the {count}", file=sys.stderr)
        return
    psi = cfg.truncation
    where += f", truncation {psi:g}" if psi != 1 else ""
    if cfg.walk:
        write_walk(G, cfg.walk, seed, forward, cfg.out, psi)
        print(f"wrote walk.gif ({cfg.walk} points, {cfg.walk * WALK_FRAMES} frames) and its frames in walk/ to "
              f"{cfg.out} ({where}, seed {seed}: --seed {seed} writes the same walk again)", file=sys.stderr)
        return
    if cfg.morph:
        count = write_frames(draw(G, walk_noise(latents, WALK_FRAMES), forward, psi), cfg.out, "morph")
        print(f"wrote morph.gif ({len(latents)} latents, {count} frames) and its frames in morph/ to {cfg.out} "
              f"({where})", file=sys.stderr)
        return
    if cfg.walk_ones:
        count = write_frames(draw(G, ones_noise(G.args["z_dim"]), forward, psi), cfg.out, "walk_ones")
        print(f"wrote walk_ones.gif ({count} frames) and its frames in walk_ones/ to {cfg.out} ({where})",
              file=sys.stderr)
        return
    if cfg.seeds:
        seeds = parse_seeds(cfg.seeds)
        z = seed_noise(seeds, G.args["z_dim"])
        faces = draw(G, z, forward, psi)
        names = [f"seed{s:04d}.png" for s in seeds]
        for name, row in zip(names, truncate(z, psi)):   # the z each face was drawn from
            write_latent(os.path.join(cfg.out, name.replace(".png", ".npy")), row)
        told = f"seeds {cfg.seeds}"
    else:
        faces = generate(G, cfg.num, seed, forward, psi)
        names = [f"{i:0{max(4, len(str(cfg.num - 1)))}d}.png" for i in range(cfg.num)]
        told = f"seed {seed}: --seed {seed} writes the same faces again"
    for name, face in zip(names, faces):
        write_png(os.path.join(cfg.out, name), face)
    write_png(os.path.join(cfg.out, "grid.png"), make_grid(faces[:GRID_MAX]), scale=grid_scale(faces.shape[1]))
    print(f"wrote {len(faces)} faces of {faces.shape[1]}x{faces.shape[2]} and grid.png to {cfg.out} ({where}, {told})",
          file=sys.stderr)


def check_truncation(psi, arch, reconstruct=None):
    """ConfigError where --truncation `psi` (not 1) cannot apply: an architecture whose G it does not change, or
    --reconstruct, whose faces come from the encoder's z."""
    if psi == 1:
        return
    problem = network.architecture(arch).truncation_problem
    if problem:
        raise runtime.ConfigError(f"--truncation does not apply to --arch {arch}: {problem}; leave it at 1")
    if reconstruct:
        raise runtime.ConfigError("--truncation does not apply to --reconstruct, whose faces come from the encoder's "
                                  "z; leave it at 1")


def write_reconstructions(E, G, dataset, count, seed, folder):
    """reconstruct.png: `count` faces of `dataset` drawn with `seed`, each beside its reconstruction.

    Returns (how many, at most the dataset's size; their mean absolute error in grey levels; the
    fraction of reconstructions nearer their own input than any other of the faces drawn).
    """
    picked = np.sort(np.random.default_rng(seed).choice(len(dataset), min(count, len(dataset)), replace=False))
    real = dataset.get_uint8(picked)
    rec = reconstruct(E, G, real)
    pairs = np.stack([real, rec], axis=1).reshape(-1, *real.shape[1:])   # real, its reconstruction, ...
    per_row = int(np.ceil(np.sqrt(len(real))))
    write_png(os.path.join(folder, "reconstruct.png"), make_grid(pairs, ncols=2 * per_row),
              scale=grid_scale(real.shape[1]))
    flat_rec, flat_real = rec.reshape(len(rec), -1).astype(np.float32), real.reshape(len(real), -1).astype(np.float32)
    distance = np.abs(flat_rec[:, None] - flat_real[None]).mean(axis=2)   # [reconstruction, input]
    return len(real), float(np.diag(distance).mean()), float((distance.argmin(axis=1) == np.arange(len(real))).mean())


def write_walk(G, points, seed, forward, folder, psi=1.0):
    """walk.gif and walk/0000.png ...: a closed loop through `points` random latent points of `seed`."""
    anchors = np.random.default_rng(seed).standard_normal((points, G.args["z_dim"]))
    write_frames(draw(G, walk_noise(anchors, WALK_FRAMES), forward, psi), folder, "walk")


def write_frames(frames, folder, name, ms=WALK_MS):
    """`name`.gif, looping, and its frames as `name`/0000.png ... in `folder`; returns how many frames."""
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    for i, frame in enumerate(frames):
        write_png(os.path.join(folder, name, f"{i:04d}.png"), frame)
    write_gif(os.path.join(folder, f"{name}.gif"), frames, ms, scale=grid_scale(frames.shape[1]))
    return len(frames)


if __name__ == "__main__":
    main()
