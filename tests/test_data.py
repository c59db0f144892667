"""Tests for jaxnn.data and jaxnn.safe_pickle: data sets, file loaders, batching."""

import gzip
import io
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import data
from jaxnn.safe_pickle import NUMPY_ARRAY_GLOBALS, UnsafePickleError, safe_load

# ------------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray, type_byte: int) -> bytes:
    header = bytes([0, 0, type_byte, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(data.IDX_DTYPES[type_byte]).tobytes()


@pytest.fixture
def mnist_like():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 0, 9, 1, 7], dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("gzipped", [False, True])
def test_load_idx_roundtrip(tmp_path, mnist_like, gzipped):
    images, labels = mnist_like
    for name, array in (("img", images), ("lab", labels)):
        raw = idx_bytes(array, 0x08)
        (tmp_path / name).write_bytes(gzip.compress(raw) if gzipped else raw)
    loaded = data.load_idx(tmp_path / "img", expected_magic=0x00000803)
    assert loaded.dtype == np.uint8 and loaded.shape == (5, 28, 28)
    np.testing.assert_array_equal(loaded, images)
    np.testing.assert_array_equal(data.load_idx(tmp_path / "lab"), labels)


@pytest.mark.parametrize("type_byte", [0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_load_idx_other_types_big_endian(tmp_path, type_byte):
    array = np.arange(-6, 6).reshape(3, 4)
    (tmp_path / "f").write_bytes(idx_bytes(array, type_byte))
    loaded = data.load_idx(tmp_path / "f")
    assert loaded.dtype == data.IDX_DTYPES[type_byte].newbyteorder("=")
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("gzipped", [False, True])
def test_load_mnist(tmp_path, mnist_like, gzipped):
    images, labels = mnist_like
    suffix = ".gz" if gzipped else ""
    wrap = gzip.compress if gzipped else bytes
    (tmp_path / f"t10k-images-idx3-ubyte{suffix}").write_bytes(wrap(idx_bytes(images, 0x08)))
    (tmp_path / f"t10k-labels-idx1-ubyte{suffix}").write_bytes(wrap(idx_bytes(labels, 0x08)))
    X, y = data.load_mnist(tmp_path, split="test")
    assert X.shape == (5, 28, 28, 1) and X.dtype == np.float32
    assert y.dtype == np.int32
    np.testing.assert_array_equal(X[..., 0], images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_mnist(tmp_path, split="train")
    with pytest.raises(ValueError, match="split"):
        data.load_mnist(tmp_path, split="validation")


def test_load_mnist_swapped_files_name_the_magic(tmp_path, mnist_like):
    images, labels = mnist_like
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(labels, 0x08))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(images, 0x08))
    with pytest.raises(ValueError, match="expected IDX magic 0x00000803, got 0x00000801"):
        data.load_mnist(tmp_path)


@pytest.mark.parametrize("gzipped", [False, True])
def test_load_idx_truncated(tmp_path, mnist_like, gzipped):
    raw = idx_bytes(mnist_like[0], 0x08)
    path = tmp_path / "truncated"
    if gzipped:
        path.write_bytes(gzip.compress(raw)[:-20])
        message = "truncated gzip"
    else:
        path.write_bytes(raw[:-7])
        message = f"expected {len(raw)} bytes .* got {len(raw) - 7} bytes"
    with pytest.raises(ValueError, match=message) as info:
        data.load_idx(path)
    assert str(path) in str(info.value)


def test_load_idx_too_long(tmp_path, mnist_like):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(mnist_like[1], 0x08) + b"\x00")
    with pytest.raises(ValueError, match="expected 13 bytes"):
        data.load_idx(path)


@pytest.mark.parametrize(
    "content", [b"\x89PNG\r\n\x1a\n" + bytes(20), b"\x00\x00\x07\x01abcd", b"\x00"]
)
def test_load_idx_wrong_format(tmp_path, content):
    path = tmp_path / "not-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="expected") as info:
        data.load_idx(path)
    assert str(path) in str(info.value)


def test_load_idx_missing(tmp_path):
    path = tmp_path / "nothing-here"
    with pytest.raises(FileNotFoundError, match=str(path)):
        data.load_idx(path)


# ---------------------------------------------------------------------------- CIFAR


def write_cifar_batch(path, n=4, protocol=pickle.DEFAULT_PROTOCOL, extra=None):
    rng = np.random.default_rng(1)
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    batch.update(extra or {})
    with open(path, "wb") as file:
        pickle.dump(batch, file, protocol=protocol)
    return batch


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_load_cifar10_batch_layout(tmp_path, protocol):
    batch = write_cifar_batch(tmp_path / "data_batch_1", protocol=protocol)
    X, y = data.load_cifar10_batch(tmp_path / "data_batch_1")
    assert X.shape == (4, 32, 32, 3) and X.dtype == np.float32
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, batch[b"labels"])
    raw = batch[b"data"]
    # first 1024 values: red channel, row-major; then green, then blue
    for i, channel in enumerate(("red", "green", "blue")):
        plane = raw[:, 1024 * i : 1024 * (i + 1)].reshape(4, 32, 32)
        np.testing.assert_array_equal(X[..., i] * 255, plane.astype(np.float32), err_msg=channel)
    assert X[2, 5, 7, 0] * 255 == raw[2, 5 * 32 + 7]
    assert X[2, 5, 7, 2] * 255 == raw[2, 2048 + 5 * 32 + 7]


class _Python2Pickler(pickle._Pickler):
    """Writes bytes and str the way Python 2 wrote its ``str``: (SHORT_)BINSTRING."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_python2_str(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + len(raw).to_bytes(4, "little") + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_python2_str
    dispatch[str] = _save_python2_str


def test_cifar_batch_in_the_original_python2_format(tmp_path):
    """The real files: protocol 2, Python 2 strings, numpy 1.x global names."""
    rng = np.random.default_rng(3)
    batch = {
        b"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8),
        b"labels": [4, 9],
        b"batch_label": b"testing batch 1 of 1",
    }
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(batch)
    raw = buffer.getvalue().replace(b"numpy._core.", b"numpy.core.")
    assert b"_codecs" not in raw and b"numpy.core.multiarray\n_reconstruct" in raw
    (tmp_path / "data_batch_1").write_bytes(raw)
    X, y = data.load_cifar10_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(y, [4, 9])
    np.testing.assert_array_equal(
        X[1, :, :, 1] * np.float32(255), batch[b"data"][1, 1024:2048].reshape(32, 32)
    )


def test_load_cifar10_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", n=i)
    write_cifar_batch(folder / "test_batch", n=3)
    X, y = data.load_cifar10(tmp_path, split="train")
    assert X.shape == (15, 32, 32, 3) and y.shape == (15,)
    X, y = data.load_cifar10(folder, split="test")
    assert X.shape == (3, 32, 32, 3) and y.shape == (3,)
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        data.load_cifar10(folder)


def test_cifar_wrong_contents(tmp_path):
    path = tmp_path / "b"
    with open(path, "wb") as file:
        pickle.dump({b"pixels": np.zeros((1, 3072), np.uint8)}, file)
    with pytest.raises(ValueError, match=r"expected key b'data'") as info:
        data.load_cifar10_batch(path)
    assert str(path) in str(info.value)
    write_cifar_batch(path, extra={b"data": np.zeros((4, 1024), np.uint8)})
    with pytest.raises(ValueError, match=r"\(n, 3072\)"):
        data.load_cifar10_batch(path)
    write_cifar_batch(path, extra={b"labels": [0, 1, 2]})
    with pytest.raises(ValueError, match="expected 4 labels"):
        data.load_cifar10_batch(path)
    write_cifar_batch(path, extra={b"labels": [0, 1, 2, 10]})
    with pytest.raises(ValueError, match="0..9"):
        data.load_cifar10_batch(path)
    with open(path, "wb") as file:
        pickle.dump([1, 2, 3], file)
    with pytest.raises(ValueError, match="expected a dict"):
        data.load_cifar10_batch(path)


def test_cifar_truncated_missing_not_pickle(tmp_path):
    path = tmp_path / "b"
    write_cifar_batch(path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated") as info:
        data.load_cifar10_batch(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError, match="not a valid data pickle") as info:
        data.load_cifar10_batch(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        data.load_cifar10_batch(tmp_path / "absent")


# -------------------------------------------------------------------- malicious pickles


class _OpensFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickle_that_opens_a_file_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as file:
        pickle.dump({b"data": _OpensFile(str(target)), b"labels": []}, file)
    module = open.__module__  # "io": builtins.open is io.open
    with pytest.raises(UnsafePickleError, match=rf"{module}\.open") as info:
        data.load_cifar10_batch(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    assert (info.value.module, info.value.name) == (module, "open")
    assert not target.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_that_runs_a_shell_is_refused(tmp_path, protocol):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as file:
        pickle.dump([1, _RunsShell(f"touch {target}")], file, protocol=protocol)
    module = os.system.__module__  # "posix" on Linux and macOS, "nt" on Windows
    with pytest.raises(UnsafePickleError, match=rf"{module}\.system") as info:
        safe_load(path)
    assert str(path) in str(info.value)
    assert not target.exists()


def test_safe_load_allowed_table(tmp_path):
    path = tmp_path / "a.pkl"
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    path.write_bytes(pickle.dumps({"a": array, "n": np.float64(2.5), "t": (1, "x", None)}))
    loaded = safe_load(path)
    np.testing.assert_array_equal(loaded["a"], array)
    assert loaded["n"] == 2.5 and loaded["t"] == (1, "x", None)
    with open(path, "rb") as file:
        assert safe_load(file)["t"] == (1, "x", None)
    with pytest.raises(UnsafePickleError, match=r"numpy\._core\.multiarray\._reconstruct"):
        safe_load(path, allowed={})
    assert ("numpy", "ndarray") in NUMPY_ARRAY_GLOBALS
    path.write_bytes(pickle.dumps([1, {"k": b"v"}]))
    assert safe_load(path, allowed={}) == [1, {"k": b"v"}]
    with pytest.raises(TypeError, match="binary file object"):
        safe_load(12)


def test_codecs_encode_admits_only_latin1(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps(b"\x00\xff", protocol=2))
    assert safe_load(path) == b"\x00\xff"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(ValueError, match="latin1"):
        safe_load(path)


# ------------------------------------------------------------------------- house prices


def test_house_prices_shape_units_relu():
    x, y = data.house_prices(0, m=400)
    assert x.shape == (400, 1) and y.shape == (400, 1)
    assert x.dtype == jnp.float32 and y.dtype == jnp.float32
    assert bool(jnp.all(y >= 0))
    assert 300 <= float(x.min()) and float(x.max()) <= 3000
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    assert np.median(y[x < 600]) == 0.0
    slope, intercept = np.polyfit(x[x > 1200], y[x > 1200], 1)
    assert slope == pytest.approx(0.2, rel=0.1)
    assert -intercept / slope == pytest.approx(800, abs=100)


def test_house_prices_seed_and_key():
    x1, y1 = data.house_prices(3, m=10)
    x2, y2 = data.house_prices(jax.random.key(3), m=10)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = data.house_prices(4, m=10)
    assert not np.array_equal(x1, x3)
    x64, _ = data.house_prices(3, m=10, dtype=jnp.float64)
    assert x64.dtype == jnp.float64
    with pytest.raises(TypeError, match="key"):
        data.house_prices("seed")
    with pytest.raises(ValueError, match="m must be"):
        data.house_prices(0, m=0)
    with pytest.raises(TypeError, match="floating"):
        data.house_prices(0, dtype=jnp.int32)


def test_neuron_scaling_maps_fitted_neuron_back():
    x, y = data.house_prices(0, m=50, dtype=jnp.float64)
    scaling = data.NeuronScaling.fit(x, y)
    x_s, y_s = scaling.transform(x, y)
    assert float(jnp.mean(x_s)) == pytest.approx(0, abs=1e-12)
    assert float(jnp.std(x_s)) == pytest.approx(1)
    assert float(jnp.mean(y_s**2)) == pytest.approx(1)
    assert bool(jnp.all(y_s[y == 0] == 0))
    a, b = 1.3, -0.4
    a_raw, b_raw = scaling.to_raw(a, b)
    scaled_prediction = scaling.y_scale * jnp.maximum(a * x_s + b, 0)
    np.testing.assert_allclose(scaled_prediction, jnp.maximum(a_raw * x + b_raw, 0), atol=1e-9)


# ------------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes():
    split = data.digits()
    assert split.X_train.shape == (1438, 64) and split.X_test.shape == (359, 64)
    assert split.X_train.dtype == np.float32 and split.y_train.dtype == np.int32
    images = data.digits(as_images=True, dtype=np.float64)
    assert images.X_train.shape == (1438, 8, 8, 1) and images.X_train.dtype == np.float64
    np.testing.assert_allclose(images.X_train.reshape(-1, 64), split.X_train, rtol=1e-6, atol=1e-6)
    raw = data.digits(standardize=False)
    assert raw.X_train.min() == 0 and raw.X_train.max() == 1


def test_digits_split_deterministic_and_stratified():
    a, b, c = data.digits(seed=0), data.digits(seed=0), data.digits(seed=1)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(a.y_test, c.y_test)
    y_all = np.concatenate([a.y_train, a.y_test])
    expected = np.bincount(y_all) * 0.2
    assert np.all(np.abs(np.bincount(a.y_test, minlength=10) - expected) <= 1)
    assert set(np.unique(a.y_test)) == set(range(10))


def test_digits_standardised_with_training_statistics_only():
    from sklearn.datasets import load_digits

    split = data.digits(seed=5, dtype=np.float64)
    train_idx, test_idx = data.stratified_indices(load_digits().target, 0.2, seed=5)
    X = load_digits().data
    mean, std = X[train_idx].mean(axis=0), X[train_idx].std(axis=0)
    std[std == 0] = 1
    np.testing.assert_allclose(split.X_train, (X[train_idx] - mean) / std, atol=1e-12)
    np.testing.assert_allclose(split.X_test, (X[test_idx] - mean) / std, atol=1e-12)
    np.testing.assert_allclose(split.X_train.mean(axis=0), 0, atol=1e-12)
    assert np.abs(split.X_test.mean(axis=0)).max() > 1e-3


def test_stratified_indices_partition():
    y = np.repeat(np.arange(3), [10, 7, 1])
    train, test = data.stratified_indices(y, 0.3, seed=2)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(18))
    assert np.bincount(y[test], minlength=3).tolist() == [3, 2, 0]
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        data.stratified_indices(y, 1.0)
    with pytest.raises(ValueError, match="integer"):
        data.stratified_indices(y.astype(float))


# ----------------------------------------------------------------------- colour patches


@pytest.fixture(scope="module")
def patches():
    return data.color_patches(seed=0, stride=32)


def test_color_patches_shapes_and_balance(patches):
    X_train, y_train, X_test, y_test = patches
    assert X_train.shape[1:] == (64, 64, 3) and X_test.shape[1:] == (64, 64, 3)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int32
    assert 0 <= X_train.min() and X_train.max() <= 1
    assert len(X_train) == 22 * 9 and len(X_test) == 8 * 9
    assert np.bincount(y_train).tolist() == [99, 99]
    assert np.bincount(y_test).tolist() == [36, 36]
    assert data.majority_baseline(y_train, y_test) == 0.5


def test_color_patches_pixels_match_layout(patches):
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    photos = {os.path.basename(f): im for f, im in zip(bunch.filenames, bunch.images, strict=True)}
    layout = data.color_patch_layout(seed=0, stride=32)
    for image, name in enumerate(("china.jpg", "flower.jpg")):
        for part, X in ((False, patches.X_train), (True, patches.X_test)):
            rows = np.flatnonzero(layout.test == part)
            k = int(np.flatnonzero(layout.image[rows] == image)[5])
            top, left = layout.top[rows[k]], layout.left[rows[k]]
            expected = photos[name][top : top + 64, left : left + 64].astype(np.float32) / 255
            np.testing.assert_array_equal(X[k], expected)


def test_color_patches_no_train_test_overlap():
    for seed in range(3):
        layout = data.color_patch_layout(seed=seed, stride=16)
        assert layout.test.sum() == 2 * 4 * 25 and (~layout.test).sum() == 2 * 11 * 25
        for image in (0, 1):
            covered = np.zeros((2, 427, 640), dtype=bool)
            for top, left, test in zip(
                layout.top[layout.image == image],
                layout.left[layout.image == image],
                layout.test[layout.image == image],
                strict=True,
            ):
                covered[int(test), top : top + 64, left : left + 64] = True
            assert not np.any(covered[0] & covered[1])
    assert not np.array_equal(
        data.color_patch_layout(seed=0).test, data.color_patch_layout(seed=1).test
    )


def test_color_patches_standardised_on_train():
    X_train, _, X_test, _ = data.color_patches(stride=64, standardize=True, dtype=np.float64)
    np.testing.assert_allclose(X_train.mean(axis=(0, 1, 2)), 0, atol=1e-10)
    np.testing.assert_allclose(X_train.std(axis=(0, 1, 2)), 1, atol=1e-10)
    assert np.abs(X_test.mean(axis=(0, 1, 2))).max() > 1e-3


def test_color_patch_layout_errors():
    with pytest.raises(ValueError, match="cell must be >= patch"):
        data.color_patch_layout(cell=32)
    with pytest.raises(ValueError, match="test cells"):
        data.color_patch_layout(test_fraction=0.01)
    with pytest.raises(ValueError, match="stride"):
        data.color_patch_layout(stride=0)


def test_majority_baseline():
    assert data.majority_baseline(np.array([0, 1, 1, 2])) == 0.5
    assert data.majority_baseline(np.array([0, 1, 1]), np.array([0, 0, 0, 1])) == 0.25
    with pytest.raises(ValueError, match="integer"):
        data.majority_baseline(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="non-empty"):
        data.majority_baseline(np.array([], dtype=np.int32))


# ------------------------------------------------------------------------------ batching


def test_minibatches_permutation_and_remainder():
    m, batch_size = 23, 5
    batches = data.minibatches(jax.random.key(0), m, batch_size)
    assert batches.shape == (4, 5)
    flat = np.asarray(batches).ravel()
    assert len(set(flat.tolist())) == flat.size
    assert set(flat.tolist()) <= set(range(m))
    expected = np.asarray(jax.random.permutation(jax.random.key(0), m))[:20]
    np.testing.assert_array_equal(flat, expected)
    left_out = [
        set(range(m)) - set(np.asarray(data.minibatches(k, m, 5)).ravel().tolist())
        for k in jax.random.split(jax.random.key(1), 5)
    ]
    assert all(len(s) == m % batch_size for s in left_out)
    assert len({frozenset(s) for s in left_out}) > 1
    np.testing.assert_array_equal(
        np.sort(np.asarray(data.minibatches(jax.random.key(2), 6, 6))), [range(6)]
    )


@pytest.mark.parametrize(
    ("m", "batch_size", "error"),
    [
        (10, 11, ValueError),
        (10, 0, ValueError),
        (10, -2, ValueError),
        (0, 1, ValueError),
        (10, 2.0, TypeError),
        (10, True, TypeError),
    ],
)
def test_minibatches_errors(m, batch_size, error):
    with pytest.raises(error, match="batch_size|m must"):
        data.minibatches(jax.random.key(0), m, batch_size)


def test_to_device():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.array([1, 2], dtype=np.int32)
    xd, yd = data.to_device(x, y)
    assert isinstance(xd, jax.Array) and isinstance(yd, jax.Array)
    assert xd.dtype == np.float32 and yd.dtype == np.int32
    assert xd.devices() == {jax.devices()[0]}
    np.testing.assert_array_equal(xd, x)
