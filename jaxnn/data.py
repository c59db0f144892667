"""Data sets for the notes, loaders for files already on disk, and minibatching.

Everything here works offline:

- ``house_prices``: synthetic square feet -> price, ReLU-shaped, for the single
  neuron ``f(x) = max(a x + b, 0)``; ``NeuronScaling`` standardises it and maps a
  fitted ``a, b`` back to thousands of dollars per square foot.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), with a
  deterministic stratified split and standardisation fitted on the training part.
- ``color_patches``: 64x64x3 patches of scikit-learn's two bundled photographs
  (china.jpg, flower.jpg); the task is which photograph a patch comes from, and the
  split is by spatial region so that no test pixel appears in a training patch.
- ``load_idx`` / ``load_mnist``, ``load_cifar10_binary_batch``, ``load_cifar10_batch``
  and ``load_cifar10``: read MNIST-style IDX files and CIFAR-10 batches a user already
  has. The binary CIFAR-10 batches (``cifar-10-batches-bin``) need no pickle and are
  preferred; the python batches are pickles, read with
  :func:`jaxnn.safe_pickle.safe_load`, never with plain ``pickle.load``. Every file is
  hostile until checked (:mod:`jaxnn.files`): only regular files are opened, and every
  size a header claims is checked before anything is allocated.
- ``minibatches`` and ``to_device`` for training loops.

Arrays are returned as numpy arrays on the host (images NHWC, labels int32);
``to_device`` places them on the default JAX device.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import checks
from jaxnn.files import MAX_GZIP_RATIO, BadFileError, gunzip, open_regular, read_exactly
from jaxnn.gradient_descent import batch_indices
from jaxnn.safe_pickle import check_array, safe_load

__all__ = [
    "IDX_DTYPES",
    "MAX_CIFAR_BINARY_BYTES",
    "MAX_IDX_BYTES",
    "NeuronScaling",
    "PatchLayout",
    "Split",
    "color_patch_layout",
    "color_patches",
    "digits",
    "house_prices",
    "load_cifar10",
    "load_cifar10_batch",
    "load_cifar10_binary_batch",
    "load_idx",
    "load_mnist",
    "majority_baseline",
    "minibatches",
    "stratified_indices",
    "to_device",
]


class Split(NamedTuple):
    """A train/test split: ``X_train`` (m_train, ...), ``y_train`` (m_train,) int32,
    ``X_test`` (m_test, ...), ``y_test`` (m_test,) int32."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


# ----------------------------------------------------------------------------- helpers


def _check_fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{what} must be a number in (0, 1), got {type(value).__name__}")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {value}")
    return value


def _check_float_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return dtype


def _as_key(key_or_seed: Any) -> jax.Array:
    if isinstance(key_or_seed, bool | np.bool_):
        raise TypeError(f"expected a jax.random key or an int seed, got bool {key_or_seed!r}")
    if isinstance(key_or_seed, int | np.integer):
        return jax.random.key(int(key_or_seed))
    if isinstance(key_or_seed, jax.Array | np.ndarray):
        if jnp.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key) and key_or_seed.shape == ():
            return key_or_seed
        if key_or_seed.dtype == np.uint32 and key_or_seed.shape == (2,):
            return jax.random.wrap_key_data(key_or_seed)
        raise ValueError(
            "expected a single jax.random key (typed key of shape () or raw uint32 (2,)), "
            f"got dtype {key_or_seed.dtype} shape {key_or_seed.shape}"
        )
    raise TypeError(f"expected a jax.random key or an int seed, got {type(key_or_seed).__name__}")


def _standardize(train: np.ndarray, test: np.ndarray, axis: tuple[int, ...]):
    """Standardise both with the mean/std of ``train`` over ``axis`` (std 0 -> 1)."""
    mean = train.mean(axis=axis, dtype=np.float64, keepdims=True)
    std = train.std(axis=axis, dtype=np.float64, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray | None = None) -> float:
    """Accuracy of always predicting the most frequent class of ``y_train``.

    Args:
      y_train: integer labels, shape (m,); the majority class is taken from these
        (ties go to the smallest label).
      y_test: optional integer labels, shape (m_test,), scored with that class;
        ``None`` scores on ``y_train`` itself.

    Returns:
      A Python float in [0, 1]: the accuracy any useful classifier must beat.
    """
    y_train = np.asarray(y_train)
    y_eval = y_train if y_test is None else np.asarray(y_test)
    for name, y in (("y_train", y_train), ("y_test", y_eval)):
        if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"{name} must be a non-empty 1-D integer array, got dtype {y.dtype} shape {y.shape}"
            )
        if y.min() < 0:
            raise ValueError(f"{name} must hold labels >= 0, got {y.min()}")
    majority = int(np.argmax(np.bincount(y_train)))
    return float(np.mean(y_eval == majority))


def stratified_indices(
    y: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test indices.

    Each class c with n_c examples puts ``floor(n_c * test_fraction + 0.5)`` of them,
    chosen by ``numpy.random.default_rng(seed)``, in the test part; so each class's
    test count is within half an example of its expected share.

    Args:
      y: integer labels, shape (m,).
      test_fraction: share of each class in the test part, in (0, 1).
      seed: Python int seeding the numpy generator.

    Returns:
      ``(train_idx, test_idx)``: disjoint int64 index arrays covering ``range(m)``,
      each in a shuffled order (not grouped by class).
    """
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be a 1-D integer array, got dtype {y.dtype} shape {y.shape}")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    rng = np.random.default_rng(checks.integer(seed, "seed"))
    train, test = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_test = math.floor(members.size * test_fraction + 0.5)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


# ----------------------------------------------------------------------- house prices


def house_prices(
    key_or_seed: Any,
    m: int = 100,
    *,
    slope: float = 0.2,
    threshold: float = 800.0,
    noise: float = 25.0,
    sqft_range: tuple[float, float] = (300.0, 3000.0),
    dtype: Any = jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """Synthetic house sizes and prices for the notes' single ReLU neuron.

    ``price = max(slope * (sqft - threshold) + noise * ε, 0)`` with ``ε ~ N(0, 1)``
    and ``sqft ~ Uniform(sqft_range)``: flat at zero below ``threshold`` square feet,
    a straight line above it, so ``f(x) = max(a x + b, 0)`` is the right model with
    true ``a = slope`` and ``b = -slope * threshold``.

    Units: ``x`` in square feet, ``y`` in thousands of dollars (the default slope
    0.2 is $200 per square foot). The raw values are large; fit on
    ``NeuronScaling.fit(x, y).transform(x, y)`` and map the fitted parameters back
    with ``NeuronScaling.to_raw``.

    Args:
      key_or_seed: a ``jax.random`` key or a Python int seed.
      m: number of houses, >= 1.
      slope, threshold, noise, sqft_range: the generating relation (see above).
      dtype: floating dtype of the result.

    Returns:
      ``(x, y)``: JAX arrays of shape (m, 1) and dtype ``dtype``; ``y >= 0``.
    """
    key = _as_key(key_or_seed)
    m = checks.integer(m, "m", 1)
    low, high = sqft_range
    if not low < high:
        raise ValueError(f"sqft_range must be (low, high) with low < high, got {sqft_range}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    dtype = _check_float_dtype(dtype)
    key_x, key_noise = jax.random.split(key)
    x = jax.random.uniform(key_x, (m, 1), dtype=dtype, minval=low, maxval=high)
    eps = jax.random.normal(key_noise, (m, 1), dtype=dtype)
    y = jnp.maximum(slope * (x - threshold) + noise * eps, 0)
    return x, y.astype(dtype)


class NeuronScaling(NamedTuple):
    """Scaling for fitting ``y = max(a x + b, 0)`` on well-conditioned numbers.

    ``x_s = (x - x_mean) / x_std`` and ``y_s = y / y_scale``. ``y`` is divided but
    not centred: subtracting a mean would move the ReLU's floor away from zero, and
    the scaled problem would no longer be a single ReLU neuron.
    """

    x_mean: float
    x_std: float
    y_scale: float

    @classmethod
    def fit(cls, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike) -> NeuronScaling:
        """Statistics from ``x`` (m, 1) and ``y`` (m, 1): mean/std of x, RMS of y."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 2 or x.shape[1] != 1:
            raise ValueError(f"x and y must both have shape (m, 1), got {x.shape} and {y.shape}")
        x_std = float(x.std())
        y_scale = float(np.sqrt(np.mean(y**2)))
        return cls(float(x.mean()), x_std if x_std > 0 else 1.0, y_scale if y_scale > 0 else 1.0)

    def transform(
        self, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike
    ) -> tuple[jax.Array, jax.Array]:
        """Scaled ``(x_s, y_s)``, same shapes and dtypes as ``x`` and ``y``."""
        x = jnp.asarray(x)
        y = jnp.asarray(y)
        return ((x - self.x_mean) / self.x_std).astype(x.dtype), (y / self.y_scale).astype(y.dtype)

    def to_raw(self, a: jax.typing.ArrayLike, b: jax.typing.ArrayLike) -> tuple[Any, Any]:
        """Map a neuron fitted on scaled data back to raw units.

        ``y_scale * max(a x_s + b, 0) = max(a_raw x + b_raw, 0)`` with
        ``a_raw = y_scale a / x_std`` (thousands of dollars per square foot) and
        ``b_raw = y_scale (b - a x_mean / x_std)`` (thousands of dollars).
        """
        a_raw = self.y_scale * a / self.x_std
        b_raw = self.y_scale * (b - a * self.x_mean / self.x_std)
        return a_raw, b_raw


# ----------------------------------------------------------------------------- digits


def digits(
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
    as_images: bool = False,
    dtype: Any = np.float32,
) -> Split:
    """scikit-learn's bundled handwritten digits, split and scaled.

    1,797 grey 8x8 images of the digits 0-9 (pixel values 0-16), about 180 per
    class; nothing is downloaded. The split is :func:`stratified_indices` with
    ``seed`` and ``test_fraction`` (with the defaults: 1,438 train, 359 test).

    Args:
      seed: Python int; the same seed gives the same split.
      test_fraction: share of each class held out, in (0, 1).
      standardize: if true, each pixel is standardised with the mean and standard
        deviation of the *training* part (a pixel constant in training gets std 1);
        if false, pixels are divided by 16 into [0, 1].
      as_images: if true, X is NHWC (m, 8, 8, 1); otherwise (m, 64).
      dtype: floating dtype of X.

    Returns:
      ``Split`` with X of dtype ``dtype`` and shape (m, 64) or (m, 8, 8, 1), and
      labels int32 of shape (m,) in 0..9.
    """
    from sklearn.datasets import load_digits

    dtype = _check_float_dtype(dtype)
    bunch = load_digits()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int32)
    train_idx, test_idx = stratified_indices(y, test_fraction, seed)
    X_train, X_test = X[train_idx], X[test_idx]
    if standardize:
        X_train, X_test = _standardize(X_train, X_test, axis=(0,))
    else:
        X_train, X_test = X_train / 16.0, X_test / 16.0
    if as_images:
        X_train = X_train.reshape(-1, 8, 8, 1)
        X_test = X_test.reshape(-1, 8, 8, 1)
    return Split(X_train.astype(dtype), y[train_idx], X_test.astype(dtype), y[test_idx])


# ----------------------------------------------------------------------- colour patches

_PHOTO_NAMES = ("china.jpg", "flower.jpg")


class PatchLayout(NamedTuple):
    """Where each patch of ``color_patches`` comes from; all arrays have shape (n,).

    ``image`` is the photograph (0 china.jpg, 1 flower.jpg; also the label), ``top``
    and ``left`` the patch's upper-left pixel, ``cell`` the index of the cell within
    its photograph, ``test`` whether the patch is in the test part.
    """

    image: np.ndarray
    top: np.ndarray
    left: np.ndarray
    cell: np.ndarray
    test: np.ndarray


def color_patch_layout(
    seed: int = 0,
    patch: int = 64,
    stride: int = 16,
    cell: int | None = None,
    test_fraction: float = 0.25,
    image_shape: tuple[int, int] = (427, 640),
) -> PatchLayout:
    """Patch coordinates and their train/test assignment, split by spatial region.

    Each photograph is tiled into non-overlapping ``cell`` x ``cell`` squares (the
    right and bottom margins that do not fill a cell are unused). In each
    photograph, ``floor(n_cells * test_fraction + 0.5)`` cells chosen by
    ``numpy.random.default_rng(seed)`` are test cells, the rest training cells.
    Patches are cut with ``stride`` inside each cell and never cross a cell border,
    so no pixel of a test patch is in any training patch. Both photographs get the
    same number of train and test cells, so the classes are balanced exactly.

    Args:
      seed: Python int choosing the test cells.
      patch: patch side in pixels.
      stride: step between patches inside a cell, >= 1.
      cell: cell side in pixels, >= ``patch``; ``None`` means ``2 * patch``.
      test_fraction: share of cells per photograph held out, in (0, 1).
      image_shape: (height, width) of the photographs.

    Returns:
      ``PatchLayout`` of int64 arrays (``test`` bool), ordered by photograph, cell,
      row, column.
    """
    patch = checks.integer(patch, "patch", 1)
    stride = checks.integer(stride, "stride", 1)
    cell = 2 * patch if cell is None else checks.integer(cell, "cell")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    height, width = image_shape
    if cell < patch:
        raise ValueError(f"cell must be >= patch ({patch}), got {cell}")
    rows, cols = height // cell, width // cell
    n_cells = rows * cols
    n_test = math.floor(n_cells * test_fraction + 0.5)
    if not 1 <= n_test < n_cells:
        raise ValueError(
            f"test_fraction={test_fraction} of {n_cells} cells of {cell}x{cell} per "
            f"{height}x{width} photograph gives {n_test} test cells; need between 1 and "
            f"{n_cells - 1}"
        )
    rng = np.random.default_rng(checks.integer(seed, "seed"))
    offsets = np.arange(0, cell - patch + 1, stride)
    d_top, d_left = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
    columns = {name: [] for name in PatchLayout._fields}
    for image in range(len(_PHOTO_NAMES)):
        test_cells = set(rng.permutation(n_cells)[:n_test].tolist())
        for c in range(n_cells):
            r, q = divmod(c, cols)
            columns["image"].append(np.full(d_top.size, image))
            columns["top"].append(r * cell + d_top)
            columns["left"].append(q * cell + d_left)
            columns["cell"].append(np.full(d_top.size, c))
            columns["test"].append(np.full(d_top.size, c in test_cells))
    return PatchLayout(**{k: np.concatenate(v) for k, v in columns.items()})


def color_patches(
    seed: int = 0,
    patch: int = 64,
    stride: int = 16,
    cell: int | None = None,
    test_fraction: float = 0.25,
    standardize: bool = False,
    dtype: Any = np.float32,
) -> Split:
    """Colour patches of scikit-learn's two bundled photographs; label = which photo.

    The photographs are china.jpg (label 0) and flower.jpg (label 1), each
    427x640x3 uint8, shipped with scikit-learn. Patches are laid out by
    :func:`color_patch_layout` (split by spatial region: no train/test overlap).
    With the defaults (64x64 patches, stride 16, 128x128 cells, 15 cells per photo,
    4 of them test): 550 training and 200 test patches, exactly half of each class,
    so the majority-class baseline is 0.5.

    Args:
      seed: Python int choosing the test cells.
      patch, stride, cell, test_fraction: see :func:`color_patch_layout`.
      standardize: if false, pixels are scaled to [0, 1]; if true, each colour
        channel is standardised with the mean and std of the training patches.
      dtype: floating dtype of X.

    Returns:
      ``Split`` with X NHWC of shape (m, patch, patch, 3) and dtype ``dtype``, and
      labels int32 in {0, 1}, in layout order (training code shuffles with
      :func:`minibatches`).
    """
    from sklearn.datasets import load_sample_images

    dtype = _check_float_dtype(dtype)
    bunch = load_sample_images()
    by_name = {Path(f).name: im for f, im in zip(bunch.filenames, bunch.images, strict=True)}
    photos = [by_name[name] for name in _PHOTO_NAMES]
    shape = photos[0].shape[:2]
    if any(p.shape[:2] != shape for p in photos):
        raise ValueError(f"sample photographs differ in size: {[p.shape for p in photos]}")
    layout = color_patch_layout(seed, patch, stride, cell, test_fraction, image_shape=shape)
    X = np.empty((layout.image.size, patch, patch, 3), dtype=np.float64)
    for i, (image, top, left) in enumerate(zip(layout.image, layout.top, layout.left, strict=True)):
        X[i] = photos[image][top : top + patch, left : left + patch]
    X /= 255.0
    y = layout.image.astype(np.int32)
    X_train, X_test = X[~layout.test], X[layout.test]
    if standardize:
        X_train, X_test = _standardize(X_train, X_test, axis=(0, 1, 2))
    return Split(X_train.astype(dtype), y[~layout.test], X_test.astype(dtype), y[layout.test])


# ------------------------------------------------------------------------ IDX (MNIST)

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type byte -> big-endian numpy dtype of the stored values."""

MAX_IDX_BYTES = 2**32
"""The largest IDX file (header and values, after decompression) ``load_idx`` reads."""

_GZIP_MAGIC = b"\x1f\x8b"


def _idx_header(head: bytes, path: str, expected_magic: int | None):
    """(shape, dtype, header length) from the first bytes of an IDX file; the total
    size these claim is checked by the caller before anything else is read."""
    if len(head) < 4:
        raise BadFileError(path, f"expected at least a 4-byte IDX header, got {len(head)} bytes")
    magic = int.from_bytes(head[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise BadFileError(path, f"expected IDX magic 0x{expected_magic:08X}, got 0x{magic:08X}")
    type_byte, ndim = head[2], head[3]
    if head[:2] != b"\x00\x00" or type_byte not in IDX_DTYPES or ndim < 1:
        raise BadFileError(
            path, f"expected IDX magic 0x0000TTDD with type TT in "
            f"{{{', '.join(f'{t:02X}' for t in IDX_DTYPES)}}} and DD >= 1 dimensions, "
            f"got 0x{magic:08X}"
        )
    header = 4 + 4 * ndim
    if len(head) < header:
        raise BadFileError(
            path, f"expected a {header}-byte header for {ndim} dimensions, got {len(head)} bytes")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return shape, IDX_DTYPES[type_byte], header


def _idx_size(shape, dtype: np.dtype, header: int, path: str) -> int:
    total = header + math.prod(shape) * dtype.itemsize
    if total > MAX_IDX_BYTES:
        raise BadFileError(path, f"the header claims shape {shape} of {dtype.name} "
                                 f"({total} bytes), more than the {MAX_IDX_BYTES}-byte limit "
                                 "(data.MAX_IDX_BYTES)")
    return total


def load_idx(path: str | os.PathLike[str], expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), a byte giving the number of
    dimensions d, then d big-endian uint32 sizes, then the values, big-endian,
    row-major. MNIST images have magic 0x00000803 (uint8, 3-D), labels 0x00000801
    (uint8, 1-D). Gzip is detected by the magic bytes 1f 8b, not by the file name.

    Sizes are checked before anything is allocated: the size the header claims must
    be at most :data:`MAX_IDX_BYTES` and equal the file's size; a gzipped file may
    claim at most :data:`jaxnn.files.MAX_GZIP_RATIO` times its compressed size, and
    is decompressed in steps that stop one byte past the claimed size.

    Args:
      path: a regular file (FIFOs, devices, directories are refused before opening).
      expected_magic: if given, the 4-byte magic number the file must have.

    Returns:
      A numpy array of the stored shape and the native-endian version of the stored
      dtype (uint8 for MNIST).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError (``jaxnn.files.BadFileError``): not a regular file, wrong magic,
        unknown type byte, a size over the limits or one that does not match the
        header; the message names the path and what was expected.
    """
    path = os.fspath(path)
    file, size = open_regular(path, "IDX")
    with file:
        gzipped = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        if gzipped:
            def claimed(head: bytes) -> int:
                total = _idx_size(*_idx_header(head, path, expected_magic), path)
                if total > MAX_GZIP_RATIO * size:
                    raise BadFileError(
                        path, f"the header claims {total} bytes, more than "
                        f"{MAX_GZIP_RATIO} times the {size}-byte gzip file "
                        "(files.MAX_GZIP_RATIO); refused before decompressing")
                return total

            raw = gunzip(file, path, claimed)
            shape, dtype, header = _idx_header(bytes(raw[:1024]), path, expected_magic)
        else:
            shape, dtype, header = _idx_header(file.read(1024), path, expected_magic)
            expected = _idx_size(shape, dtype, header, path)
            if size != expected:
                raise BadFileError(
                    path, f"expected {expected} bytes for shape {shape} of {dtype.name}, "
                    f"got {size} bytes" + (" (truncated)" if size < expected else ""))
            file.seek(0)
            raw = bytearray(size)
            if file.readinto(raw) != size:
                raise BadFileError(path, "the file shrank while it was read")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    if dtype.itemsize > 1:  # to native byte order, in place
        data = data.byteswap(inplace=True).view(dtype.newbyteorder())
    return data.view(dtype.newbyteorder("="))


_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def _find_mnist_file(folder: Path, prefix: str, kind: str) -> Path:
    idx = "idx3" if kind == "images" else "idx1"
    stems = [f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"]
    candidates = [folder / (s + suffix) for s in stems for suffix in ("", ".gz")]
    for candidate in candidates:
        if os.path.lexists(candidate):  # a FIFO or device is refused when opened
            return candidate
    raise FileNotFoundError(
        f"no MNIST {kind} file in {folder}; looked for {', '.join(c.name for c in candidates)}"
    )


def load_mnist(
    folder: str | os.PathLike[str], split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST (or Fashion-MNIST) from the standard IDX files in ``folder``.

    Looks for ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (split
    "train") or ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` (split
    "test"), each optionally gzipped (``.gz``); the variant spelling
    ``train-images.idx3-ubyte`` is accepted too.

    Returns:
      ``(X, y)``: X float32 NHWC (m, 28, 28, 1) in [0, 1]; y int32 (m,) in 0..9.
    """
    if split not in _MNIST_PREFIX:
        raise ValueError(f"split must be one of {sorted(_MNIST_PREFIX)}, got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST folder not found: {folder}")
    prefix = _MNIST_PREFIX[split]
    images_path = _find_mnist_file(folder, prefix, "images")
    labels_path = _find_mnist_file(folder, prefix, "labels")
    images = load_idx(images_path, expected_magic=0x00000803)
    labels = load_idx(labels_path, expected_magic=0x00000801)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected images of 28x28, got {images.shape[1:]}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels"
        )
    if images.ndim != 3 or labels.ndim != 1:
        raise BadFileError(images_path, f"expected 3-D images and 1-D labels, got "
                                        f"{images.ndim}-D and {labels.ndim}-D")
    if labels.size and labels.max() > 9:
        raise BadFileError(labels_path, f"expected labels in 0..9, got {labels.max()}")
    X = (images.astype(np.float32) / np.float32(255.0))[..., None]
    return X, labels.astype(np.int32)


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
_CIFAR_RECORD = 1 + 3072

MAX_CIFAR_BINARY_BYTES = 2**30
"""The largest CIFAR-10 binary batch ``load_cifar10_binary_batch`` reads (a real one
is 30,730,000 bytes: 10,000 records)."""


def _cifar_field(batch: dict, key: str, path: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    found = ", ".join(_describe_key(k) for k in list(batch)[:8])
    raise BadFileError(path, f"expected key b{key!r} in the CIFAR batch dict, got keys {found}")


def _describe_key(key: Any) -> str:
    if isinstance(key, str | bytes):
        return repr(key[:40]) + ("..." if len(key) > 40 else "")
    return type(key).__name__


def _cifar_labels(labels: Any, n: int, path: str) -> np.ndarray:
    """The labels as int32 after checking each is an int (Python or numpy, not bool,
    not float) in 0..9; a list, tuple or 1-D integer array of n of them."""
    if type(labels) is np.ndarray:
        check_array(labels, f"{path}: b'labels'")
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise BadFileError(path, f"expected b'labels' to be ints, got an array of "
                                     f"{labels.dtype} with {labels.ndim} dimensions")
        values = labels
    elif type(labels) in (list, tuple):
        bad = next((v for v in labels if not (type(v) is int or isinstance(v, np.integer))), None)
        if bad is not None:
            raise BadFileError(path, f"expected b'labels' to be a list of ints in 0..9, found "
                                     f"a {type(bad).__name__}")
        values = labels
    else:
        raise BadFileError(path, f"expected b'labels' to be a list of ints, got "
                                 f"{type(labels).__name__}")
    if len(values) != n:
        raise BadFileError(path, f"expected {n} labels (one per row of b'data'), got "
                                 f"{len(values)}")
    if type(values) is not np.ndarray:
        out_of_range = next((v for v in values if not 0 <= v <= 9), None)
        if out_of_range is not None:
            shown = out_of_range if abs(out_of_range) < 10**12 else "a huge int"
            raise BadFileError(path, f"expected labels in 0..9, got {shown}")
        values = np.array(values, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 9):
        raise BadFileError(path, f"expected labels in 0..9, got range "
                                 f"{values.min()}..{values.max()}")
    return values.astype(np.int32)


def _cifar_images(data: np.ndarray) -> np.ndarray:
    """(n, 3072) uint8 rows, 1024 red then green then blue, to NHWC float32 in [0, 1]."""
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / np.float32(255.0)


def load_cifar10_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load one CIFAR-10 python batch (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

    The file is a pickle of a dict with ``b"data"``, a uint8 array (n, 3072) whose
    rows hold 1024 red, then 1024 green, then 1024 blue values, each a 32x32 image
    in row-major order, and ``b"labels"``, a list of n ints in 0..9. It is read with
    :func:`jaxnn.safe_pickle.safe_load` (see there for what a pickle may and may not
    do); the binary batches (:func:`load_cifar10_binary_batch`) need no pickle at all
    and are the better choice.

    Returns:
      ``(X, y)``: X float32 NHWC (n, 32, 32, 3) in [0, 1]; y int32 (n,) in 0..9.

    Raises:
      FileNotFoundError: the file does not exist.
      UnsafePickleError: the pickle names a forbidden global (a ``ValueError``).
      ValueError: not a regular file, not a CIFAR batch (missing key, wrong shape or
        dtype, labels that are not ints in 0..9), or a pickle that is malformed or asks
        for more than data; the message names the file.
    """
    path = os.fspath(path)
    batch = safe_load(path)
    if type(batch) is not dict:
        raise BadFileError(path, f"expected a dict in the CIFAR batch, got {type(batch).__name__}")
    data = _cifar_field(batch, "data", path)
    labels = _cifar_field(batch, "labels", path)
    if type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2:
        raise BadFileError(
            path, f"expected b'data' to be a uint8 array of shape (n, 3072), got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        )
    if data.shape[1] != 3072:
        raise BadFileError(path, f"expected b'data' of shape (n, 3072), got {data.shape}")
    check_array(data, f"{path}: b'data'")
    y = _cifar_labels(labels, data.shape[0], path)
    return _cifar_images(data), y


def load_cifar10_binary_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load one CIFAR-10 binary batch (``data_batch_1.bin`` .. ``data_batch_5.bin``,
    ``test_batch.bin`` of ``cifar-10-batches-bin``).

    The file is n records of 3073 bytes: one label byte (0..9), then 3072 pixel bytes
    laid out as in the python batches (1024 red, 1024 green, 1024 blue, each 32x32
    row-major). No pickle, no header: the file's size must be a positive multiple of
    3073 and at most :data:`MAX_CIFAR_BINARY_BYTES`.

    Returns:
      ``(X, y)``: X float32 NHWC (n, 32, 32, 3) in [0, 1]; y int32 (n,) in 0..9.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError (``jaxnn.files.BadFileError``): not a regular file, a size that is not
        a whole number of records or over the limit, or a label byte over 9.
    """
    path = os.fspath(path)
    file, size = open_regular(path, "CIFAR-10 binary batch")
    with file:
        if size == 0 or size % _CIFAR_RECORD or size > MAX_CIFAR_BINARY_BYTES:
            raise BadFileError(path, f"expected a whole number of {_CIFAR_RECORD}-byte records "
                                     f"(1 label + 3072 pixels), at most {MAX_CIFAR_BINARY_BYTES} "
                                     f"bytes; got {size} bytes")
        records = np.frombuffer(read_exactly(file, size, path, "CIFAR-10 records"), np.uint8)
    records = records.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        first = int(np.argmax(labels > 9))
        raise BadFileError(path, f"expected label bytes in 0..9, record {first} has "
                                 f"{labels[first]}")
    return _cifar_images(records[:, 1:]), labels.astype(np.int32)


def _cifar_folder(folder: Path, names: tuple[str, ...]) -> tuple[Path, bool]:
    """Where the batches are and whether they are binary: ``folder`` itself, or its
    ``cifar-10-batches-bin`` (preferred) or ``cifar-10-batches-py`` subfolder."""
    for place, binary in ((folder, True), (folder / "cifar-10-batches-bin", True),
                          (folder, False), (folder / "cifar-10-batches-py", False)):
        first = place / (names[0] + (".bin" if binary else ""))
        if os.path.lexists(first):
            return place, binary
    return folder, False


def load_cifar10(
    folder: str | os.PathLike[str], split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 from its binary or python batches in ``folder``.

    ``folder`` is the extracted ``cifar-10-batches-bin`` or ``cifar-10-batches-py``
    directory or their parent; the binary batches (``*.bin``,
    :func:`load_cifar10_binary_batch`) are used when present, since reading them
    involves no pickle. Split "train" concatenates batches 1 .. 5 (50,000 images),
    "test" reads the test batch (10,000).

    Returns:
      ``(X, y)``: X float32 NHWC (m, 32, 32, 3) in [0, 1]; y int32 (m,) in 0..9.
    """
    names = {"train": _CIFAR_TRAIN, "test": _CIFAR_TEST}
    if split not in names:
        raise ValueError(f"split must be one of {sorted(names)}, got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {folder}")
    folder, binary = _cifar_folder(folder, names[split])
    if binary:
        parts = [load_cifar10_binary_batch(folder / f"{name}.bin") for name in names[split]]
    else:
        parts = [load_cifar10_batch(folder / name) for name in names[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --------------------------------------------------------------------------- batching


def minibatches(key: jax.Array, m: int, batch_size: int) -> jax.Array:
    """Indices of one epoch of minibatches, from ``jax.random.permutation(key, m)``.

    Remainder rule: the permutation is cut into ``m // batch_size`` full batches and
    the ``m % batch_size`` examples left at its end are not used this epoch. A fresh
    key each epoch gives a fresh permutation, so different examples are left out
    each time and every batch has the same shape (one compilation of the step).

    Args:
      key: a ``jax.random`` key.
      m: number of examples, >= 1.
      batch_size: examples per batch, 1 <= batch_size <= m.

    Returns:
      Integer JAX array of shape (m // batch_size, batch_size); no index repeats.
    """
    m = checks.integer(m, "m", 1)
    batch_size = checks.integer(batch_size, "batch_size", 1, m, f"m={m}")
    return batch_indices(key, m, batch_size)  # the same cut that sgd.train uses


def to_device(*arrays: Any, device: Any = None) -> tuple[jax.Array, ...]:
    """Place arrays (numpy or JAX, any pytrees) on ``device`` (default: JAX's default).

    Returns:
      A tuple with one JAX array (or pytree of them) per argument, same shapes and
      dtypes (float64 only where ``jax_enable_x64`` is on).
    """
    return tuple(jax.device_put(arrays, device))
