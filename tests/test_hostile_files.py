"""Hostile files: every loader refuses them with a ValueError naming the file, quickly,
in bounded memory, and never runs, changes or crashes anything.

The memory cases run in one subprocess (``tests/_hostile_child.py``) with a 3 GiB
address-space limit, one fork per case; each fork reports what it raised and the rise
of its peak RSS over the call. Every hostile file here is under 1 MiB, and every call
must stay under 100 MiB of growth and end within 20 s (a FIFO that blocked would hit
that alarm). The rest run in-process.
"""

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxnn import checkpoint, data, safe_pickle
from jaxnn.files import BadFileError
from jaxnn.safe_pickle import safe_load

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "_hostile_child.py"
GROWTH_MIB = 100

if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
    from numpy._core import multiarray as _multiarray
else:  # pragma: no cover
    from numpy.core import multiarray as _multiarray


class Reduce:
    """Pickles as ``f(*args)``, then BUILD with ``state`` if given: any call a pickle
    can ask for."""

    def __init__(self, f, args, state=None):
        self.f, self.args, self.state = f, args, state

    def __reduce__(self):
        return (self.f, self.args) if self.state is None else (self.f, self.args, self.state)


def cifar_pickle(path, labels=None, data_=None, protocol=2, extra=None):
    batch = {b"data": np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
             if data_ is None else data_, b"labels": [3, 7] if labels is None else labels}
    batch.update(extra or {})
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return path


def body(obj) -> bytes:
    """The opcodes of ``obj`` without PROTO and STOP, to splice into a hand-made pickle."""
    raw = pickle.dumps(obj, protocol=2)
    assert raw[:2] == b"\x80\x02" and raw[-1:] == b"."
    return raw[2:-1]


def ndarray_calls():
    """Case 1: numpy.ndarray called with a buffer, offset and strides of the file's choice."""
    return {
        "object_pointer": ((1,), "O", b"A" * 8),         # element pointer 0x4141...: SIGSEGV
        "negative_offset": ((2, 3072), "u1", b"x" * 64, -8192),  # heap memory as pixels
        "huge_negative_offset": ((2, 3072), "u1", b"x" * 64, -(2**40)),
        "zero_strides": ((40000, 3072), "u1", b"\x07", 0, (0, 0)),  # 390 bytes -> 469 MiB
        "zero_strides_1e6": ((10**6, 3072), "u1", b"\x07", 0, (0, 0)),  # MemoryError
    }


def idx_gzip(path, shape, zero_members, member_mib=1):
    """A gzip of an IDX uint8 header for ``shape``, then many members of zeros."""
    header = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    zeros = gzip.compress(b"\0" * (member_mib * 2**20), compresslevel=9)
    path.write_bytes(gzip.compress(header) + zeros * zero_members)
    return path


def good_state(step, W1=None):
    import jax.numpy as jnp

    rng = np.random.default_rng(step)
    params = [{"W": rng.normal(size=(5, 3)).astype(np.float32) if W1 is None else W1,
               "b": np.zeros(5, np.float32)},
              {"W": rng.normal(size=(2, 5)).astype(np.float32), "b": np.ones(2, np.float32)}]
    params = [{k: jnp.asarray(v) for k, v in layer.items()} for layer in params]
    return checkpoint.TrainState(params, (), None, step, step)


def rezip(path, change):
    """Rewrite a checkpoint's zip entries as stored members after ``change(dict name->bytes)``;
    ``change`` may return {name: (bytes, compress_type)} for the entries it wants otherwise."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    special = change(members) or {}
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            if name in special:
                continue
            z.writestr(name, raw, compress_type=zipfile.ZIP_STORED)
        for name, writer in special.items():
            writer(z, name)


def npy_header(shape, descr) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False,
                                             "shape": shape})
    return f.getvalue()


def set_leaf0_shape(members, shape):
    meta = json.loads(np.lib.format.read_array(io.BytesIO(members["__metadata__.npy"])).tobytes())
    meta["leaves"][0]["shape"] = list(shape)
    f = io.BytesIO()
    np.lib.format.write_array(f, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    members["__metadata__.npy"] = f.getvalue()


def hostile_checkpoints(tmp: Path) -> dict:
    """Case 6: folders of (good step 1, hostile step 2); the name says what step 2 claims."""
    folders = {}

    def folder(name, damage):
        where = tmp / "ckpt" / name
        checkpoint.save(where, good_state(1))
        damage(checkpoint.save(where, good_state(2)))
        folders[name] = where

    def leaf_claims_1_tib(path):
        def change(m):
            set_leaf0_shape(m, (2**20, 2**18))
            m["leaf_0.npy"] = npy_header((2**20, 2**18), "<f4") + b"\0" * 64
        rezip(path, change)

    def metadata_claims_64_gib(path):
        def change(m):
            m["__metadata__.npy"] = npy_header((2**36,), "|u1") + b"{}" * 32
        rezip(path, change)

    def checksum_claims_64_gib(path):
        def change(m):
            m["__sha256__.npy"] = npy_header((2**36,), "|u1") + b"0" * 64
        rezip(path, change)

    def deflated_256_mib_of_zeros(path):
        def change(m):
            set_leaf0_shape(m, (2**26,))
            def write(z, name):
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                with z.open(info, "w", force_zip64=True) as f:
                    f.write(npy_header((2**26,), "<f4"))
                    block = b"\0" * 2**24
                    for _ in range(16):
                        f.write(block)
            return {"leaf_0.npy": write}
        rezip(path, change)

    def entry_past_the_end(path):
        raw = bytearray(path.read_bytes())
        # leaf_0's compressed and uncompressed sizes in the central directory: 2**30
        cd = raw.find(b"PK\x01\x02")
        while cd != -1:
            name_len = int.from_bytes(raw[cd + 28:cd + 30], "little")
            if raw[cd + 46:cd + 46 + name_len] == b"leaf_0.npy":
                raw[cd + 20:cd + 28] = (2**30).to_bytes(4, "little") * 2
            cd = raw.find(b"PK\x01\x02", cd + 4)
        path.write_bytes(bytes(raw))

    for damage in (leaf_claims_1_tib, metadata_claims_64_gib, checksum_claims_64_gib,
                   deflated_256_mib_of_zeros, entry_past_the_end):
        folder(damage.__name__, damage)
    return folders


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    cases, paths = [], {}

    def add(name, call, path):
        assert Path(path).is_dir() or os.path.getsize(path) < 2**20 or not Path(path).is_file()
        cases.append([name, call, str(path)])
        paths[name] = Path(path)

    for name, args in ndarray_calls().items():
        add(f"ndarray_{name}", "load_cifar10_batch",
            cifar_pickle(tmp / f"{name}.pkl", labels=Reduce(np.ndarray, args)))
        add(f"ndarray_{name}_as_data", "load_cifar10_batch",
            cifar_pickle(tmp / f"{name}_data.pkl", data_=Reduce(np.ndarray, args)))
    # numpy's own path, with a state that lies about its size
    lying = Reduce(_multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                   (1, (40000, 3072), np.dtype("u1"), False, b"\x07"))
    add("reconstruct_lying_state", "load_cifar10_batch",
        cifar_pickle(tmp / "lying.pkl", data_=lying))
    objects = Reduce(_multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                     (1, (1,), np.dtype("O"), False, [b"A"]))
    add("reconstruct_object_array", "load_cifar10_batch",
        cifar_pickle(tmp / "objects.pkl", labels=objects))
    # case 3: deep nesting, as a dict key and as a value
    deep = 200_000
    key = b"\x80\x02}K\x01" + b"\x85" * deep + b"K\x02s."
    (tmp / "deep_key.pkl").write_bytes(key)
    add("deep_key", "load_cifar10_batch", tmp / "deep_key.pkl")
    value = b"\x80\x02}" + body(b"data") + b"K\x01" + b"\x85" * deep + b"s."
    (tmp / "deep_value.pkl").write_bytes(value)
    add("deep_value", "load_cifar10_batch", tmp / "deep_value.pkl")
    # a length far past the end of the file, before anything is allocated
    (tmp / "long_bytes.pkl").write_bytes(b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x.")
    add("bytes8_claims_1_tib", "safe_load", tmp / "long_bytes.pkl")
    (tmp / "long_bytearray.pkl").write_bytes(
        b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b"x.")
    add("bytearray8_claims_1_tib", "safe_load", tmp / "long_bytearray.pkl")
    # case 4: FIFOs, a device, a directory
    fifo_folder = tmp / "fifo_cifar"
    fifo_folder.mkdir()
    os.mkfifo(fifo_folder / "data_batch_1")
    add("fifo_cifar10_folder", "load_cifar10", fifo_folder)
    bin_folder = tmp / "fifo_cifar_bin"
    bin_folder.mkdir()
    os.mkfifo(bin_folder / "data_batch_1.bin")
    add("fifo_cifar10_binary_folder", "load_cifar10", bin_folder)
    os.mkfifo(tmp / "fifo.idx")
    add("fifo_idx", "load_idx", tmp / "fifo.idx")
    mnist = tmp / "fifo_mnist"
    mnist.mkdir()
    os.mkfifo(mnist / "train-images-idx3-ubyte")
    os.mkfifo(mnist / "train-labels-idx1-ubyte")
    add("fifo_mnist_folder", "load_mnist", mnist)
    os.mkfifo(tmp / "fifo.pkl")
    add("fifo_pickle", "safe_load", tmp / "fifo.pkl")
    os.mkfifo(tmp / "fifo.bin")
    add("fifo_cifar10_binary_batch", "load_cifar10_binary_batch", tmp / "fifo.bin")
    ckpt_fifo = tmp / "fifo_ckpt"
    checkpoint.save(ckpt_fifo, good_state(1))
    os.mkfifo(checkpoint.checkpoint_path(ckpt_fifo, 2))
    add("fifo_restore", "restore", checkpoint.checkpoint_path(ckpt_fifo, 2))
    add("fifo_restore_latest", "restore_latest", ckpt_fifo)
    add("device_idx", "load_idx", "/dev/zero")
    add("device_pickle", "safe_load", "/dev/zero")
    add("directory_idx", "load_idx", tmp)
    # case 5: gzip bombs
    add("gzip_zeros_no_header", "load_idx", zeros_only(tmp / "zeros.gz"))
    add("gzip_header_claims_too_much", "load_idx", idx_gzip(tmp / "big.gz", (60000, 28, 28), 300))
    add("gzip_more_than_claimed", "load_idx", idx_gzip(tmp / "more.gz", (1000, 28, 28), 300))
    big_dims = bytes([0, 0, 8, 3]) + (2**32 - 1).to_bytes(4, "big") * 3 + b"\0" * 64
    (tmp / "big_dims.idx").write_bytes(big_dims)
    add("idx_dims_claim_2_96_bytes", "load_idx", tmp / "big_dims.idx")
    # case 6: checkpoints that claim sizes they do not hold
    for name, where in hostile_checkpoints(tmp).items():
        add(f"ckpt_{name}", "restore", checkpoint.checkpoint_path(where, 2))
        add(f"ckpt_{name}_latest", "restore_latest", where)

    cases_path, out = tmp / "cases.json", tmp / "out.json"
    cases_path.write_text(json.dumps(cases))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, str(CHILD), str(cases_path), str(out)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text()), paths


def zeros_only(path):
    """400 gzip members of 1 MiB of zeros each (170 KiB): no IDX header at all."""
    path.write_bytes(gzip.compress(b"\0" * 2**20, compresslevel=9) * 400)
    return path


def refused(files, name, *words):
    """The case raised a ValueError naming its file and saying each of ``words``,
    within the memory bound."""
    results, paths = files
    r = results[name]
    assert r["signal"] is None, f"{name}: killed by signal {r['signal']}"
    assert r["error"] is not None, f"{name}: returned {r.get('returned')}"
    assert r["is_value_error"], f"{name}: {r['error']}: {r['message']}"
    assert str(paths[name]) in r["message"], r["message"]
    for word in words:
        assert word in r["message"], (name, r["message"])
    assert r["rss_growth_mib"] < GROWTH_MIB, (name, r["rss_growth_mib"])


def fell_back(files, name, reason):
    """restore_latest took step 1 and named step 2 with ``reason`` among the skipped."""
    results, paths = files
    r = results[name]
    assert r["signal"] is None and r["error"] is None, (name, r)
    assert r["returned"]["path"].endswith("checkpoint_000000000001.npz"), r
    [(skipped, why)] = r["returned"]["skipped"]
    assert skipped.endswith("checkpoint_000000000002.npz") and reason in why, (name, why)
    assert r["rss_growth_mib"] < GROWTH_MIB, (name, r["rss_growth_mib"])


# --------------------------------------------------------------- 1. ndarray as a callable


@pytest.mark.parametrize("name", list(ndarray_calls()))
def test_ndarray_with_chosen_buffer_offset_strides_is_never_called(files, name):
    refused(files, f"ndarray_{name}", "REDUCE may call only admitted functions", "ndarray")
    refused(files, f"ndarray_{name}_as_data", "REDUCE may call only admitted functions")


def test_reconstruct_state_must_hold_exactly_its_bytes(files):
    refused(files, "reconstruct_lying_state", "needs 122880000 bytes, the pickle holds 1")
    refused(files, "reconstruct_object_array", "plain number dtype")


def test_arrays_after_loading_are_plain_and_own_their_data(tmp_path):
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = cifar_pickle(tmp_path / f"p{protocol}", protocol=protocol,
                            labels=np.array([3, 7], np.int64))
        batch = safe_load(path)
        for key in (b"data", b"labels"):
            array = batch[key]
            assert type(array) is np.ndarray and array.flags.c_contiguous
            assert array.flags.owndata or len(memoryview(array.base).obj if isinstance(
                array.base, memoryview) else array.base if array.base is not None
                and not isinstance(array.base, np.ndarray) else array.base.base) == array.nbytes
        X, y = data.load_cifar10_batch(path)
        np.testing.assert_array_equal(y, [3, 7])
    # a Fortran-ordered array is not what numpy writes for CIFAR: refused
    path = tmp_path / "fortran"
    path.write_bytes(pickle.dumps({b"data": np.asfortranarray(np.zeros((2, 3072), np.uint8)),
                                   b"labels": [1, 2]}, protocol=2))
    with pytest.raises(ValueError, match="only C-ordered arrays"):
        data.load_cifar10_batch(path)


# ------------------------------------------------------------ 2. BUILD on admitted objects


def test_build_cannot_change_an_admitted_function(tmp_path):
    numpy_reconstruct_defaults = _multiarray._reconstruct.__doc__
    before = safe_pickle._latin1_encode.__defaults__
    for module, name in (("_codecs", "encode"), ("numpy.core.multiarray", "_reconstruct"),
                         ("numpy", "dtype")):
        raw = (b"\x80\x02c" + f"{module}\n{name}\n".encode()
               + body((None, {"__defaults__": ("rot13", "ignore"), "__doc__": "changed"}))
               + b"b.")
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(raw)
        with pytest.raises(ValueError, match="BUILD .* is admitted only on a numpy array") as info:
            safe_load(path)
        assert str(path) in str(info.value)
    assert safe_pickle._latin1_encode.__defaults__ == before == ("latin1", "strict")
    assert _multiarray._reconstruct.__doc__ == numpy_reconstruct_defaults
    # a second BUILD on an array already built is refused too
    raw = pickle.dumps(np.zeros(3, np.uint8), protocol=2)
    assert raw.endswith(b"b.")
    twice = raw[:-1] + body((1, (1000,), np.dtype("u1"), False, b"\0" * 1000)) + b"b."
    path = tmp_path / "twice.pkl"
    path.write_bytes(twice)
    with pytest.raises(ValueError, match="BUILD"):
        safe_load(path)


def test_dtype_state_may_set_only_the_byte_order(tmp_path):
    for order, value in (("<", 1), (">", 2**24)):
        raw = pickle.dumps(np.array([1], np.dtype(f"{order}i4")), protocol=2)
        path = tmp_path / "order.pkl"
        path.write_bytes(raw)
        assert safe_load(path)[0] == 1 and value > 0
    forged = (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00i4\x89\x88\x87R"
              + body((3, "<", None, ("a",), {"a": ("x", 0)}, 8, 1, 0)) + b"b.")
    path.write_bytes(forged)
    with pytest.raises(ValueError, match="dtype state: only the byte order"):
        safe_load(path)


# --------------------------------------------------------------------------- 3. labels


@pytest.mark.parametrize("labels, words", [
    ([1.7, 2.2], "found a float"),
    ([True, False], "found a bool"),
    ([2**70, 1], "got a huge int"),
    ([np.float64(1.0), 2], "found a float64"),
    ([-1, 3], "expected labels in 0..9, got -1"),
    (np.array([1.0, 2.0]), "got an array of float64"),
    (np.array([True, False]), "got an array of bool"),
    ("01", "expected b'labels' to be a list of ints, got str"),
])
def test_labels_must_be_ints_in_0_to_9(tmp_path, labels, words):
    path = cifar_pickle(tmp_path / "batch", labels=labels)
    with pytest.raises(ValueError, match=words) as info:
        data.load_cifar10_batch(path)
    assert str(path) in str(info.value)


def test_numpy_int_labels_are_accepted(tmp_path):
    path = cifar_pickle(tmp_path / "batch", labels=[np.int64(9), np.uint8(0)])
    np.testing.assert_array_equal(data.load_cifar10_batch(path)[1], [9, 0])


def test_deep_nesting_never_raises_recursion_error(files):
    refused(files, "deep_key", "dict keys and set members must be")
    refused(files, "deep_value", "nested deeper than 100")


def test_stated_lengths_past_the_end_are_refused_before_allocating(files):
    refused(files, "bytes8_claims_1_tib", "length of 1099511627776 bytes")
    refused(files, "bytearray8_claims_1_tib", "length of 1099511627776 bytes")


# ------------------------------------------------------------------ 4. non-regular files


@pytest.mark.parametrize("name", ["fifo_cifar10_folder", "fifo_cifar10_binary_folder",
                                  "fifo_idx", "fifo_pickle", "fifo_cifar10_binary_batch",
                                  "fifo_restore"])
def test_fifo_is_refused_before_opening(files, name):
    results, paths = files
    r = results[name]
    assert r["signal"] is None and r["is_value_error"], r  # no 20 s alarm: it never blocked
    assert "a FIFO (named pipe)" in r["message"] and str(paths[name]) in r["message"], r


def test_fifo_in_an_mnist_folder_is_refused(files):
    results, _ = files
    r = results["fifo_mnist_folder"]
    assert r["signal"] is None and r["is_value_error"] and "FIFO" in r["message"], r


def test_restore_latest_skips_a_fifo(files):
    results, _ = files
    r = results["fifo_restore_latest"]
    assert r["error"] is None, r
    assert r["returned"]["path"].endswith("checkpoint_000000000001.npz")
    [(skipped, why)] = r["returned"]["skipped"]
    assert skipped.endswith("checkpoint_000000000002.npz") and "not a regular file" in why


def test_devices_and_directories_are_refused(files):
    refused(files, "device_idx", "a character device")
    refused(files, "device_pickle", "a character device")
    refused(files, "directory_idx", "a directory")


# ------------------------------------------------------------------------ 5. gzip bombs


def test_gzip_of_zeros_is_refused_after_its_header(files):
    refused(files, "gzip_zeros_no_header", "expected IDX magic")


def test_gzip_header_claiming_more_than_the_ratio_is_refused_before_decompressing(files):
    refused(files, "gzip_header_claims_too_much", "47040016 bytes", "MAX_GZIP_RATIO")


def test_gzip_stream_longer_than_its_header_stops_there(files):
    refused(files, "gzip_more_than_claimed", "more than the 784016 bytes the header claims")


def test_idx_dims_over_the_limit(files):
    refused(files, "idx_dims_claim_2_96_bytes", "MAX_IDX_BYTES")


def test_multi_member_gzip_within_its_header_loads(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(3, 28, 28)
    raw = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    raw += images.tobytes()
    path = tmp_path / "multi.gz"
    path.write_bytes(gzip.compress(raw[:100]) + gzip.compress(raw[100:]))
    np.testing.assert_array_equal(data.load_idx(path), images)
    path.write_bytes(gzip.compress(raw)[:-9])
    with pytest.raises(BadFileError, match="truncated gzip"):
        data.load_idx(path)


# ------------------------------------------------------------------------ 6. checkpoints


@pytest.mark.parametrize("name, words", [
    ("leaf_claims_1_tib", "claims [1048576, 262144] of float32 (1099511627776 bytes)"),
    ("metadata_claims_64_gib", "more than the 67108864 allowed"),
    ("checksum_claims_64_gib", "the metadata says uint8[64]"),
    ("deflated_256_mib_of_zeros", "compressed"),
    ("entry_past_the_end", "more than the"),
])
def test_checkpoint_sizes_are_checked_and_restore_latest_falls_back(files, name, words):
    refused(files, f"ckpt_{name}", words)
    fell_back(files, f"ckpt_{name}_latest", words)


# ---------------------------------------------------------------- CIFAR-10 binary batches


def test_cifar10_binary_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    records = {}
    for name, n in [*((f"data_batch_{i}", i) for i in range(1, 6)), ("test_batch", 3)]:
        r = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
        r[:, 0] %= 10
        (folder / f"{name}.bin").write_bytes(r.tobytes())
        records[name] = r
    X, y = data.load_cifar10(tmp_path, split="test")
    r = records["test_batch"]
    np.testing.assert_array_equal(y, r[:, 0])
    assert X.shape == (3, 32, 32, 3) and X.dtype == np.float32
    # record 1, row 5, column 7: red at 1 + 5*32 + 7, blue 2048 further on
    assert X[1, 5, 7, 0] * 255 == r[1, 1 + 5 * 32 + 7]
    assert X[1, 5, 7, 2] * 255 == r[1, 1 + 2048 + 5 * 32 + 7]
    X, y = data.load_cifar10(folder)
    assert X.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(y[:1], records["data_batch_1"][:, 0])
    bad = folder / "test_batch.bin"
    bad.write_bytes(r.tobytes()[:-1])
    with pytest.raises(BadFileError, match="whole number of 3073-byte records") as info:
        data.load_cifar10_binary_batch(bad)
    assert str(bad) in str(info.value)
    r[2, 0] = 10
    bad.write_bytes(r.tobytes())
    with pytest.raises(BadFileError, match="record 2 has 10"):
        data.load_cifar10_binary_batch(bad)


def test_deeply_nested_checkpoint_metadata_is_corrupt_not_a_recursion_error(tmp_path):
    good = checkpoint.save(tmp_path, good_state(1))
    bad = checkpoint.save(tmp_path, good_state(2))

    def change(m):
        f = io.BytesIO()
        np.lib.format.write_array(f, np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8))
        m["__metadata__.npy"] = f.getvalue()
    rezip(bad, change)
    with pytest.raises(checkpoint.CorruptCheckpointError, match="nested too deeply") as info:
        checkpoint.restore(bad, good_state(0))
    assert str(bad) in str(info.value)
    restored = checkpoint.restore_latest(tmp_path, good_state(0))
    assert restored.path == good and [s.path for s in restored.skipped] == [bad]
