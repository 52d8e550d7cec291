"""Image-set metrics that need no pretrained network: the PG-GAN paper's SWD, MS-SSIM diversity, near-copies.

All work on uint8 N x H x W x 3 arrays with numpy and SciPy alone, so train.py (--eval-every)
and evaluate.py share them without either importing the other.

- Multi-scale sliced Wasserstein distance (SWD, Karras et al. 2018): Laplacian pyramid from
  the image size down to 16x16; 128 random 7x7x3 patches per image and level, each set
  normalised by its own per-channel mean and std; 4 repeats x 128 random directions; mean
  absolute difference of the sorted projections. Reported x 1e3 per level and averaged.
  Lower is better. The real/real value (two disjoint halves of the data) is the floor.
- MS-SSIM diversity: 5-scale MS-SSIM of consecutive pairs of images, averaged; lower means
  more varied faces.
- Memorization: each generated face's nearest training image (pixel L2 at 32x32 or less, mirrored
  training images included); a face closer than half the typical nearest-neighbour distance
  between training images counts as a near-copy.

Example:
    per_size, mean = swd(fakes, reals)        # two uint8 sets of the same shape
"""
import numpy as np
import scipy.ndimage
import scipy.signal

from facedata import area_downsample

SWD_PATCH = 7                 # patch side (PG-GAN)
SWD_PATCHES = 128             # patches per image and level
SWD_REPEATS = 4               # rounds of random directions
SWD_DIRECTIONS = 128          # directions per round
SWD_SMALLEST = 16             # the pyramid stops at 16x16
BINOMIAL = np.float32([1, 4, 6, 4, 1]) / 16   # separable 5x5 binomial kernel, [1 4 6 4 1]^2 / 256
MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
COPY_FRACTION = 0.5           # nearer than this fraction of the typical train-train distance: a copy
MEMO_SIZE = 32                # side at which nearest neighbours are searched


# ----------------------------------------------------------------------------- SWD

def _blur(x, kernel):
    """Separable binomial blur of float N x C x H x W, mirrored borders (as cv2.pyrDown/pyrUp)."""
    x = scipy.ndimage.convolve1d(x, kernel, axis=2, mode="mirror")
    return scipy.ndimage.convolve1d(x, kernel, axis=3, mode="mirror")


def pyr_down(x):
    """Blur, then keep every second row and column: N x C x H x W -> N x C x H/2 x W/2."""
    return _blur(x, BINOMIAL)[:, :, ::2, ::2]


def pyr_up(x):
    """Insert zeros between pixels, then blur with 4x the kernel: N x C x H x W -> N x C x 2H x 2W."""
    n, c, h, w = x.shape
    up = np.zeros((n, c, 2 * h, 2 * w), np.float32)
    up[:, :, ::2, ::2] = x
    return _blur(up, BINOMIAL * 2)  # 2 per axis: 4 in all, for the three quarters that are zero


def laplacian_pyramid(x, levels):
    """[band at full size, ..., band at size / 2^(levels-2), low-pass residual]; float32 NCHW."""
    pyramid = [np.asarray(x, np.float32)]
    for _ in range(levels - 1):
        low = pyr_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - pyr_up(low)
        pyramid.append(low)
    return pyramid


def reconstruct(pyramid):
    """The image a Laplacian pyramid came from."""
    x = pyramid[-1]
    for band in pyramid[-2::-1]:
        x = pyr_up(x) + band
    return x


def swd_levels(size):
    """Sizes at which SWD is measured: size, size/2, ..., 16 (just `size` when smaller than 16)."""
    sizes = [size]
    while sizes[-1] // 2 >= SWD_SMALLEST:
        sizes.append(sizes[-1] // 2)
    return sizes


def patches(x, per_image, rng):
    """`per_image` random 7x7 patches of each image in float N x 3 x H x W -> (N * per_image) x 3 x 7 x 7."""
    n, c, h, w = x.shape
    r = SWD_PATCH // 2
    img = np.repeat(np.arange(n), per_image)[:, None, None, None]
    ys = rng.integers(r, h - r, len(img))[:, None, None, None] + np.arange(-r, r + 1)[None, None, :, None]
    xs = rng.integers(r, w - r, len(img))[:, None, None, None] + np.arange(-r, r + 1)[None, None, None, :]
    return x[img, np.arange(c)[None, :, None, None], ys, xs]


def normalise(descriptors):
    """Descriptors normalised by their own per-channel mean and std, flattened to rows."""
    d = descriptors - descriptors.mean(axis=(0, 2, 3), keepdims=True)
    d /= d.std(axis=(0, 2, 3), keepdims=True)
    return d.reshape(len(d), -1)


def sliced_wasserstein(a, b, rng):
    """Mean |sorted projection of a - sorted projection of b| over random unit directions."""
    results = []
    for _ in range(SWD_REPEATS):
        dirs = rng.standard_normal((a.shape[1], SWD_DIRECTIONS)).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        results.append(np.abs(np.sort(a @ dirs, axis=0) - np.sort(b @ dirs, axis=0)).mean())
    return float(np.mean(results))


def swd(a, b, seed=0):
    """{size: SWD x 1e3} and the mean over sizes, for two equal-sized sets of uint8 N x H x W x 3 images."""
    if a.shape != b.shape:
        raise ValueError(f"SWD compares equal sets, got {a.shape} and {b.shape}")
    levels = swd_levels(a.shape[1])
    pyramids = [laplacian_pyramid(x.transpose(0, 3, 1, 2).astype(np.float32), len(levels)) for x in (a, b)]
    result = {}
    for size, band_a, band_b in zip(levels, *pyramids):
        # Both sets use the same patch positions and directions (they do not depend on the
        # images), which makes the distance exactly symmetric and exactly 0 for a set and itself.
        da = normalise(patches(band_a, SWD_PATCHES, np.random.default_rng([seed, size])))
        db = normalise(patches(band_b, SWD_PATCHES, np.random.default_rng([seed, size])))
        result[size] = sliced_wasserstein(da, db, np.random.default_rng([seed, size, 1])) * 1e3
    return result, float(np.mean(list(result.values())))


# ----------------------------------------------------------------------------- MS-SSIM

def gaussian_window(size, sigma):
    """Normalised size x size Gaussian, centred between pixels for even sizes (MATLAB's fspecial)."""
    coords = np.arange(size) - (size - 1) / 2
    g = np.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_cs(a, b, max_val=255.0, filter_size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Per-image (SSIM, contrast-structure) of float N x H x W x C images, 'valid' Gaussian windows."""
    size = min(filter_size, a.shape[1], a.shape[2])
    window = gaussian_window(size, size * sigma / filter_size)[None, :, :, None]

    def blur(x):
        return scipy.signal.fftconvolve(x, window, mode="valid")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    cs_map = (2 * cov + c2) / (var_a + var_b + c2)
    ssim_map = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1) * cs_map
    return ssim_map.mean(axis=(1, 2, 3)), cs_map.mean(axis=(1, 2, 3))


def ms_ssim(a, b):
    """Mean 5-scale MS-SSIM of the image pairs (a[i], b[i]), uint8 or float N x H x W x 3 in [0, 255].

    Five scales need 16x16 images (16, 8, 4, 2, 1); smaller ones use the scales they have,
    with the first weights rescaled to the same total.
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    levels = min(len(MS_SSIM_WEIGHTS), int(np.log2(min(a.shape[1:3]))) + 1)
    weights = MS_SSIM_WEIGHTS[:levels] * MS_SSIM_WEIGHTS.sum() / MS_SSIM_WEIGHTS[:levels].sum()
    ssims, css = [], []
    for level in range(levels):
        s, cs = _ssim_cs(a, b)
        ssims.append(s)
        css.append(cs)
        if level < levels - 1:
            a, b = area_downsample(a, 2), area_downsample(b, 2)  # 2x2 averages
    css = np.clip(np.array(css), 0, None)  # negative contrast terms would make fractional powers NaN
    ssims = np.clip(np.array(ssims), 0, None)
    per_pair = np.prod(css[:-1] ** weights[:-1, None], axis=0) * ssims[-1] ** weights[-1]
    return float(per_pair.mean())


def diversity(images):
    """MS-SSIM of consecutive pairs (0, 1), (2, 3), ...: lower means more varied images."""
    n = len(images) // 2 * 2
    return ms_ssim(images[0:n:2], images[1:n:2])


# ----------------------------------------------------------------------------- memorization

def _small(images, side):
    """uint8 N x H x W x 3 (H a multiple of `side`) -> float32 rows of side x side block averages."""
    return area_downsample(images.astype(np.float32), images.shape[1] // side).reshape(len(images), -1)


def nearest_distances(queries, references, skip=None, chunk=4096):
    """Pixel L2 distance from each query row to its nearest reference row, by chunked matrix products.

    skip[i], if given, is a reference index that query i may not match (itself).
    """
    q2 = (queries ** 2).sum(axis=1)
    best = np.full(len(queries), np.inf, np.float32)
    for start in range(0, len(references), chunk):
        r = references[start:start + chunk]
        d2 = q2[:, None] + (r ** 2).sum(axis=1)[None, :] - 2 * queries @ r.T
        if skip is not None:
            rows = np.flatnonzero((skip >= start) & (skip < start + len(r)))
            d2[rows, skip[rows] - start] = np.inf
        best = np.minimum(best, d2.min(axis=1))
    return np.sqrt(np.maximum(best, 0))


def nearest_faces(fakes, train, chunk=4096):
    """For each fake, its nearest training image (mirrors included, compared as memorization compares):
    uint8 N x H x W x 3, shown as it is nearest (mirrored where its mirror is)."""
    side = min(MEMO_SIZE, fakes.shape[1])
    queries = _small(fakes, side)
    q2 = (queries ** 2).sum(axis=1)
    best = np.full(len(queries), np.inf, np.float32)
    found = np.zeros(len(fakes), int)
    mirrored = np.zeros(len(fakes), bool)
    for start in range(0, len(train), chunk):
        part = np.asarray(train[start:start + chunk])
        for flip, rows in ((False, _small(part, side)), (True, _small(part[:, :, ::-1], side))):
            d2 = q2[:, None] + (rows ** 2).sum(axis=1)[None, :] - 2 * queries @ rows.T
            closer = d2.min(axis=1) < best
            best = np.where(closer, d2.min(axis=1), best)
            found = np.where(closer, start + d2.argmin(axis=1), found)
            mirrored = np.where(closer, flip, mirrored)
    picked = np.asarray(train[found])
    return np.where(mirrored[:, None, None, None], picked[:, :, ::-1], picked)


def memorization(fakes, train, seed=0, sample=2000, chunk=4096):
    """Near-copies among `fakes`: distance to the nearest training image (mirrors included),
    against the typical distance from a training image to its nearest other one.

    `train` may be a memmap of any size: it is read `chunk` images at a time, so memory
    does not grow with it. Images are compared at 32x32, or at the fakes' size if smaller.
    """
    side = min(MEMO_SIZE, fakes.shape[1])
    queries = _small(fakes, side)
    probe = np.sort(np.random.default_rng(seed).choice(len(train), min(sample, len(train)), replace=False))
    probes = _small(np.asarray(train[probe]), side)
    to_fake = np.full(len(queries), np.inf, np.float32)
    to_train = np.full(len(probes), np.inf, np.float32)
    for start in range(0, len(train), chunk):
        part = np.asarray(train[start:start + chunk])
        for rows in (_small(part, side), _small(part[:, :, ::-1], side)):  # plain and mirrored
            to_fake = np.minimum(to_fake, nearest_distances(queries, rows))
            # A probe may match neither itself nor its own mirror.
            to_train = np.minimum(to_train, nearest_distances(probes, rows, skip=probe - start))
    typical = float(np.median(to_train))
    copies = to_fake < COPY_FRACTION * typical
    return {"copies": int(copies.sum()), "fraction": float(copies.mean()),
            "median_nn_distance": float(np.median(to_fake)), "train_typical_nn_distance": typical}
