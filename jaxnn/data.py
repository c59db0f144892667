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
- ``load_idx`` / ``load_mnist`` and ``load_cifar10_batch`` / ``load_cifar10``: read
  MNIST-style IDX files and CIFAR-10 python batches a user already has. CIFAR
  batches are pickles and are read with :func:`jaxnn.safe_pickle.safe_load`, never
  with plain ``pickle.load``.
- ``minibatches`` and ``to_device`` for training loops.

Arrays are returned as numpy arrays on the host (images NHWC, labels int32);
``to_device`` places them on the default JAX device.
"""

from __future__ import annotations

import gzip
import math
import operator
import os
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.safe_pickle import safe_load
from jaxnn.sgd import batch_indices

__all__ = [
    "IDX_DTYPES",
    "NeuronScaling",
    "PatchLayout",
    "Split",
    "color_patch_layout",
    "color_patches",
    "digits",
    "house_prices",
    "load_cifar10",
    "load_cifar10_batch",
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


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{what} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{what} must be an integer, got {type(value).__name__} {value!r}"
        ) from None


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
    rng = np.random.default_rng(_check_int(seed, "seed"))
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
    m = _check_int(m, "m")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
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
    patch = _check_int(patch, "patch")
    stride = _check_int(stride, "stride")
    cell = 2 * patch if cell is None else _check_int(cell, "cell")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    height, width = image_shape
    if patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be >= 1, got patch={patch}, stride={stride}")
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
    rng = np.random.default_rng(_check_int(seed, "seed"))
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

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str | os.PathLike[str], what: str) -> tuple[str, bytes]:
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as error:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({error})") from None
    return path, raw


def load_idx(path: str | os.PathLike[str], expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), a byte giving the number of
    dimensions d, then d big-endian uint32 sizes, then the values, big-endian,
    row-major. MNIST images have magic 0x00000803 (uint8, 3-D), labels 0x00000801
    (uint8, 1-D). Gzip is detected by the magic bytes 1f 8b, not by the file name.

    Args:
      path: the file.
      expected_magic: if given, the 4-byte magic number the file must have.

    Returns:
      A numpy array of the stored shape and the native-endian version of the stored
      dtype (uint8 for MNIST).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: wrong magic, unknown type byte, or a length that does not match
        the header; the message names the path and what was expected.
    """
    path, raw = _read_bytes(path, "IDX")
    if len(raw) < 4:
        raise ValueError(f"{path}: expected at least a 4-byte IDX header, got {len(raw)} bytes")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: expected IDX magic 0x{expected_magic:08X}, got 0x{magic:08X}")
    type_byte, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or type_byte not in IDX_DTYPES or ndim < 1:
        raise ValueError(
            f"{path}: expected IDX magic 0x0000TTDD with type TT in "
            f"{{{', '.join(f'{t:02X}' for t in IDX_DTYPES)}}} and DD >= 1 dimensions, "
            f"got 0x{magic:08X}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: expected a {header}-byte header for {ndim} dimensions, got {len(raw)} bytes"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[type_byte]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: expected {expected} bytes for shape {shape} of {dtype.name}, "
            f"got {len(raw)} bytes" + (" (truncated)" if len(raw) < expected else "")
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def _find_mnist_file(folder: Path, prefix: str, kind: str) -> Path:
    idx = "idx3" if kind == "images" else "idx1"
    stems = [f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"]
    candidates = [folder / (s + suffix) for s in stems for suffix in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
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
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: expected labels in 0..9, got {labels.max()}")
    X = (images.astype(np.float32) / np.float32(255.0))[..., None]
    return X, labels.astype(np.int32)


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)


def _cifar_field(batch: dict, key: str, path: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    found = ", ".join(repr(k) for k in list(batch)[:8])
    raise ValueError(f"{path}: expected key b{key!r} in the CIFAR batch dict, got keys {found}")


def load_cifar10_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load one CIFAR-10 python batch (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

    The file is a pickle of a dict with ``b"data"``, a uint8 array (n, 3072) whose
    rows hold 1024 red, then 1024 green, then 1024 blue values, each a 32x32 image
    in row-major order, and ``b"labels"``, a list of n ints in 0..9. It is read with
    :func:`jaxnn.safe_pickle.safe_load`: any global other than numpy's array
    rebuilders is refused with ``UnsafePickleError`` and never called.

    Returns:
      ``(X, y)``: X float32 NHWC (n, 32, 32, 3) in [0, 1]; y int32 (n,) in 0..9.

    Raises:
      FileNotFoundError: the file does not exist.
      UnsafePickleError: the pickle names a forbidden global (a ``ValueError``).
      ValueError: not a CIFAR batch (missing key, wrong shape or dtype, bad labels).
    """
    path = os.fspath(path)
    batch = safe_load(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict in the CIFAR batch, got {type(batch).__name__}")
    data = _cifar_field(batch, "data", path)
    labels = _cifar_field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(
            f"{path}: expected b'data' to be a uint8 array of shape (n, 3072), got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        )
    if data.shape[1] != 3072:
        raise ValueError(f"{path}: expected b'data' of shape (n, 3072), got {data.shape}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: expected b'labels' to be a list of ints") from None
    if y.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: expected {data.shape[0]} labels (one per row of b'data'), got shape {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{path}: expected labels in 0..9, got range {y.min()}..{y.max()}")
    X = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / np.float32(255.0)
    return X, y.astype(np.int32)


def load_cifar10(
    folder: str | os.PathLike[str], split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 from its python batches in ``folder``.

    ``folder`` is the extracted ``cifar-10-batches-py`` directory or its parent.
    Split "train" concatenates ``data_batch_1`` .. ``data_batch_5`` (50,000
    images), "test" reads ``test_batch`` (10,000).

    Returns:
      ``(X, y)``: X float32 NHWC (m, 32, 32, 3) in [0, 1]; y int32 (m,) in 0..9.
    """
    names = {"train": _CIFAR_TRAIN, "test": _CIFAR_TEST}
    if split not in names:
        raise ValueError(f"split must be one of {sorted(names)}, got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {folder}")
    if not (folder / names[split][0]).exists() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
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
    m = _check_int(m, "m")
    batch_size = _check_int(batch_size, "batch_size")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if not 1 <= batch_size <= m:
        raise ValueError(f"batch_size must be in [1, m={m}], got {batch_size}")
    return batch_indices(key, m, batch_size)  # the same cut that sgd.train uses


def to_device(*arrays: Any, device: Any = None) -> tuple[jax.Array, ...]:
    """Place arrays (numpy or JAX, any pytrees) on ``device`` (default: JAX's default).

    Returns:
      A tuple with one JAX array (or pytree of them) per argument, same shapes and
      dtypes (float64 only where ``jax_enable_x64`` is on).
    """
    return tuple(jax.device_put(arrays, device))
