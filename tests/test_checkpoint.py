"""Checkpoints: round trip, atomic writes, keep-last-K, corrupt and mismatched files,
no pickles, no paths from file contents, and resuming on the exact trajectory."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn import DenseNetwork, checkpoint, sgd

from . import _train_subprocess
from .helpers import problem

ROOT = Path(__file__).resolve().parent.parent
TRIPPED: list = []


def _tripwire(*args):
    """What a malicious pickle would call; the tests assert it never runs."""
    TRIPPED.append(args)
    return "tripped"


class Payload:
    def __reduce__(self):
        return _tripwire, ("loaded",)


def state(dtype=jnp.float32, sizes=(3, 5, 2), optimizer=None, step=10, key=None):
    net = DenseNetwork(sizes, "tanh", "softmax", "softmax")
    params = net.init(jax.random.key(0), "xavier_normal", dtype)
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    opt_state = optimizer.init(params)
    key = jax.random.key(4) if key is None else key
    return checkpoint.TrainState(params, opt_state, key, 2, step,
                                 {"loss": [1.5, 0.25], "accuracy": [None, 0.75]},
                                 {"hidden": "tanh", "note": "../../not-a-path"})


def assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def rewrite(path, change):
    """Re-save a checkpoint's entries after ``change(dict of arrays)``."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def metadata_of(arrays):
    return json.loads(arrays["__metadata__"].tobytes())


def set_metadata(arrays, meta, fix_checksum=True):
    raw = json.dumps(meta, sort_keys=True).encode()
    arrays["__metadata__"] = np.frombuffer(raw, np.uint8)
    if fix_checksum:
        entries = [(leaf["name"], arrays[leaf["name"]]) for leaf in meta["leaves"]]
        arrays["__sha256__"] = np.frombuffer(checkpoint._digest(raw, entries).encode(), np.uint8)


# --- round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_round_trip_whole_state(tmp_path, dtype):
    saved = state(dtype)
    path = checkpoint.save(tmp_path, saved)
    assert path == tmp_path / "checkpoint_000000000010.npz"
    restored = checkpoint.restore(path, checkpoint.TrainState(saved.params, saved.opt_state))
    assert_same_tree(restored.params, saved.params)
    assert_same_tree(restored.opt_state, saved.opt_state)  # optax NamedTuples come back
    assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
    assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored.key),
                                  jax.random.key_data(saved.key))
    assert (restored.epoch, restored.step) == (2, 10)
    assert restored.history == saved.history and restored.config == saved.config


def test_raw_key_shape_dtype_template_and_explicit_update(tmp_path):
    saved = state(key=jax.random.PRNGKey(3))._replace(opt_state=())
    path = checkpoint.save(tmp_path, saved)
    template = jax.eval_shape(lambda: saved.params)  # ShapeDtypeStructs are enough
    restored = checkpoint.restore(path, checkpoint.TrainState(template, ()))
    assert_same_tree(restored.params, saved.params)
    assert restored.opt_state == ()
    np.testing.assert_array_equal(restored.key, jax.random.PRNGKey(3))


def test_names_from_step_only_and_listing(tmp_path):
    for step in (3, 12, 7):
        checkpoint.save(tmp_path, state(step=step), keep=None)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "checkpoint_12.npz").write_bytes(b"")  # not the 12-digit form
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [3, 7, 12]
    assert checkpoint.list_checkpoints(tmp_path / "missing") == []
    for bad, error in [(-1, ValueError), (10**12, ValueError), (True, TypeError),
                       ("../x", TypeError), (1.0, TypeError)]:
        with pytest.raises(error, match="step"):
            checkpoint.checkpoint_path(tmp_path, bad)


def test_metadata_never_chooses_a_path(tmp_path):
    """Whatever the metadata says, files are named from the step and stay in the folder."""
    folder = tmp_path / "run"
    path = checkpoint.save(folder, state(step=4))
    rewrite(path, lambda a: set_metadata(a, {**metadata_of(a), "step": 4, "epoch": 1,
                                             "config": {"path": "../../escape"}}))
    restored = checkpoint.restore_latest(folder, state())
    assert restored.path == path and restored.state.config == {"path": "../../escape"}
    checkpoint.save(folder, state(step=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_000000000004.npz",
                                                       "checkpoint_000000000005.npz"]


def test_keep_last_k_and_the_new_one(tmp_path):
    for step in range(1, 6):
        checkpoint.save(tmp_path, state(step=step), keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [4, 5]
    checkpoint.save(tmp_path, state(step=1), keep=2)  # older than the rest, still kept
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [1, 5]
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        checkpoint.save(tmp_path, state(step=9), keep=0)


# --- atomicity -----------------------------------------------------------------------------


def test_failed_write_leaves_old_checkpoints_and_no_temporary(tmp_path, monkeypatch):
    old = checkpoint.save(tmp_path, state(step=1))
    before = old.read_bytes()

    def dies_midway(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path, state(step=2))
    assert sorted(os.listdir(tmp_path)) == [old.name]
    assert old.read_bytes() == before


def test_temporary_of_a_killed_writer_is_ignored_then_removed(tmp_path):
    checkpoint.save(tmp_path, state(step=1))
    stale = tmp_path / ".checkpoint_000000000002.npz.abc123_x.tmp"
    stale.write_bytes(b"PK\x03\x04 interrupted")
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [1]
    assert checkpoint.restore_latest(tmp_path, state()).state.step == 1
    checkpoint.save(tmp_path, state(step=2))
    assert not stale.exists()


# --- corrupt, hostile and mismatched files ---------------------------------------------------


def corrupt_cases():
    def truncate(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def flip_data_byte(path):
        # change one value of W^[1] and re-zip: the zip's CRC is right, the checksum not
        rewrite(path, lambda a: a.__setitem__("leaf_0", a["leaf_0"] + np.float32(1.0)))

    def flip_raw_byte(path):
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))

    def empty(path):
        path.write_bytes(b"")

    def garbage(path):
        path.write_bytes(os.urandom(300))

    def single_npy(path):
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))

    def no_metadata(path):
        rewrite(path, lambda a: a.pop("__metadata__"))

    def bad_json(path):
        rewrite(path, lambda a: a.__setitem__("__metadata__", np.frombuffer(b"{oops", np.uint8)))

    def extra_entry(path):
        rewrite(path, lambda a: a.__setitem__("leaf_999", np.zeros(2)))

    def wrong_shape_header(path):
        rewrite(path, lambda a: a.__setitem__("leaf_0", a["leaf_0"][:1]))

    def evil_dtype_in_metadata(path):
        def change(a):
            meta = metadata_of(a)
            meta["leaves"][0]["dtype"] = "object"
            set_metadata(a, meta)
        rewrite(path, change)

    return [
        (truncate, r"not a readable \.npz|unreadable"),
        (flip_data_byte, "checksum mismatch"),
        (flip_raw_byte, r"unreadable|not a readable|checksum|not valid JSON|metadata"),
        (empty, r"not a readable \.npz"),
        (garbage, r"not a readable \.npz"),
        (single_npy, r"single \.npy array"),
        (no_metadata, "no __metadata__"),
        (bad_json, "not valid JSON"),
        (extra_entry, r"\['leaf_999'\] unexpected"),
        (wrong_shape_header, r"entry 'leaf_0' is float32\[1, 3\], the metadata says float32"),
        (evil_dtype_in_metadata, "unsupported dtype 'object'"),
    ]


@pytest.mark.parametrize("damage, match", corrupt_cases(), ids=lambda c: getattr(c, "__name__", ""))
def test_corrupt_file_raises_and_older_one_is_used(tmp_path, damage, match):
    good = checkpoint.save(tmp_path, state(step=1))
    bad = checkpoint.save(tmp_path, state(step=2))
    damage(bad)
    with pytest.raises(checkpoint.CorruptCheckpointError, match=match) as info:
        checkpoint.restore(bad, state())
    assert info.value.path == bad and str(bad) in str(info.value)
    assert isinstance(info.value, ValueError)
    restored = checkpoint.restore_latest(tmp_path, state())
    assert restored.path == good and [s.path for s in restored.skipped] == [bad]
    assert_same_tree(restored.state.params, state().params)


def test_pickled_object_array_is_refused_and_never_unpickled(tmp_path):
    path = checkpoint.save(tmp_path, state(step=1))
    payload = np.empty(1, dtype=object)
    payload[0] = Payload()
    rewrite(path, lambda a: a.__setitem__("leaf_0", payload))  # np.savez pickles it
    with zipfile.ZipFile(path) as z:
        assert b"_tripwire" in z.read("leaf_0.npy")  # the file really holds a pickle
    with pytest.raises(checkpoint.CorruptCheckpointError, match="pickled object array"):
        checkpoint.restore(path, state())
    with pytest.raises(checkpoint.CorruptCheckpointError, match="pickled object array"):
        checkpoint.read_metadata(path)
    with pytest.raises(checkpoint.NoValidCheckpointError, match="pickled object array"):
        checkpoint.restore_latest(tmp_path, state())
    assert TRIPPED == []


def test_a_plain_pickle_under_a_checkpoint_name_is_refused(tmp_path):
    path = checkpoint.checkpoint_path(tmp_path, 3)
    path.write_bytes(pickle.dumps({"params": Payload()}))
    with pytest.raises(checkpoint.CorruptCheckpointError, match="not a readable"):
        checkpoint.restore(path, state())
    assert TRIPPED == []


def test_saving_refuses_object_arrays(tmp_path):
    bad = state()._replace(params=[{"W": np.array([None], object)}])
    with pytest.raises(TypeError, match="object arrays cannot be saved"):
        checkpoint.save(tmp_path, bad)


@pytest.mark.parametrize(
    "template, match",
    [
        (lambda: state(sizes=(3, 6, 2)), r"params\[0\]\['W'\] is float32\[5, 3\] in the file "
                                         r"but float32\[6, 3\] in the template"),
        (lambda: state(sizes=(3, 5, 5, 2)), r"params does not fit the template.*\[2\]\['W'\]"),
        (lambda: state(dtype=jnp.float64), r"float32\[5, 3\] in the file but float64"),
        (lambda: state(optimizer=optax.sgd(0.1, momentum=0.9)), r"opt_state does not fit.*trace"),
    ],
)
def test_other_architecture_raises_mismatch(tmp_path, template, match):
    path = checkpoint.save(tmp_path, state())
    with pytest.raises(checkpoint.CheckpointMismatchError, match=match):
        checkpoint.restore(path, template())
    with pytest.raises(checkpoint.NoValidCheckpointError, match="another architecture|file"):
        checkpoint.restore_latest(tmp_path, template())


def test_newer_format_version_is_refused(tmp_path):
    path = checkpoint.save(tmp_path, state())
    rewrite(path, lambda a: set_metadata(a, {**metadata_of(a), "version": 2}))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="format version 2"):
        checkpoint.restore(path, state())


def test_restore_latest_reports_skips_and_ignores_symlinks(tmp_path):
    assert checkpoint.restore_latest(tmp_path / "none", state()) is None
    assert checkpoint.restore_latest(tmp_path, state()) is None
    outside = checkpoint.save(tmp_path / "elsewhere", state(step=50))
    folder = tmp_path / "run"
    good = checkpoint.save(folder, state(step=1))
    other = checkpoint.save(folder, state(sizes=(3, 4, 2), step=2))
    cut = checkpoint.save(folder, state(step=3))
    cut.write_bytes(cut.read_bytes()[:100])
    (folder / "checkpoint_000000000099.npz").symlink_to(outside)
    restored = checkpoint.restore_latest(folder, state())
    assert restored.path == good
    assert [s.path.name for s in restored.skipped] == [
        "checkpoint_000000000099.npz", cut.name, other.name]
    reasons = [s.reason for s in restored.skipped]
    assert "symlinks are not followed" in reasons[0]
    assert "not a readable" in reasons[1] and "in the template" in reasons[2]
    good.unlink()
    with pytest.raises(checkpoint.NoValidCheckpointError, match="no usable checkpoint among 3"):
        checkpoint.restore_latest(folder, state())


def test_no_pickle_loading_in_the_package():
    for path in sorted((ROOT / "jaxnn").glob("*.py")):
        text = path.read_text()
        assert "allow_pickle=True" not in text, path
        assert "pickle.load(" not in text and "pickle.loads(" not in text, path
        if path.name != "safe_pickle.py":
            assert "import pickle" not in text, path


# --- non-finite states ---------------------------------------------------------------------


def test_non_finite_state_is_not_saved(tmp_path):
    good = checkpoint.save(tmp_path, state(step=1))
    before = good.read_bytes()
    params = state().params
    nan = [dict(params[0], W=params[0]["W"].at[0, 0].set(jnp.nan)), params[1]]
    for bad in (state(step=1)._replace(params=nan), state(step=2)._replace(params=nan)):
        with pytest.raises(checkpoint.NonFiniteStateError, match=r"params\[0\]\['W'\] holds NaN"):
            checkpoint.save(tmp_path, bad, keep=1)
    assert os.listdir(tmp_path) == [good.name] and good.read_bytes() == before
    checkpoint.save(tmp_path, state(step=2)._replace(params=nan), allow_nonfinite=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_non_finite_checkpoint_is_skipped_unless_asked_for(tmp_path, dtype):
    good = checkpoint.save(tmp_path, state(dtype, step=1))
    params = state(dtype).params
    nan = [dict(params[0], W=params[0]["W"].at[0, 0].set(jnp.nan)), params[1]]
    with pytest.raises(checkpoint.NonFiniteStateError, match="not saved"):
        checkpoint.save(tmp_path, state(dtype, step=2)._replace(params=nan))
    bad = checkpoint.save(tmp_path, state(dtype, step=2)._replace(params=nan),
                          allow_nonfinite=True)
    with pytest.raises(checkpoint.NonFiniteStateError,
                       match=r"params\[0\]\['W'\] holds NaN.*allow_nonfinite=True") as info:
        checkpoint.restore(bad, state(dtype))
    assert isinstance(info.value, ValueError) and str(bad) in str(info.value)
    restored = checkpoint.restore_latest(tmp_path, state(dtype))
    assert restored.path == good and [s.path for s in restored.skipped] == [bad]
    assert "holds NaN" in restored.skipped[0].reason
    assert_same_tree(restored.state.params, params)
    asked = checkpoint.restore(bad, state(dtype), allow_nonfinite=True)
    assert np.isnan(np.asarray(asked.params[0]["W"][0, 0], np.float32))
    assert checkpoint.restore_latest(tmp_path, state(dtype), allow_nonfinite=True).path == bad
    # an infinite optimiser state is skipped the same way
    inf = state(dtype, step=3)
    mu = jax.tree.map(lambda x: x.at[...].set(jnp.inf) if x.ndim else x, inf.opt_state)
    worse = checkpoint.save(tmp_path, inf._replace(opt_state=mu), allow_nonfinite=True, keep=None)
    restored = checkpoint.restore_latest(tmp_path, state(dtype))
    assert restored.path == good and [s.path for s in restored.skipped] == [worse, bad]
    assert restored.skipped[0].reason.startswith("opt_state")


def test_diverging_run_keeps_last_finite_checkpoint(tmp_path):
    net, params, X, Y = problem("relu", "identity", "squared_error", 2, m=16)
    with pytest.raises(sgd.NonFiniteError) as info:
        checkpoint.train(net, params, X, Y * 1e3, folder=tmp_path, key=jax.random.key(0),
                         epochs=50, alpha=50.0, batch_size=4, keep=None)
    error = info.value
    assert error.epoch >= 1, "the run must diverge after at least one finite epoch"
    assert "last finite state" in "".join(error.__notes__)
    steps = [s for s, _ in checkpoint.list_checkpoints(tmp_path)]
    assert steps == [4 * e for e in range(1, error.epoch + 1)]
    newest = checkpoint.restore_latest(tmp_path, checkpoint.TrainState(params, ()))
    assert newest.skipped == () and newest.state.epoch == error.epoch
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(newest.state.params))
    assert newest.state.history["loss"] == error.history["loss"]


# --- resuming ------------------------------------------------------------------------------


def uninterrupted(epochs):
    net, params, X, y, key, optimizer = _train_subprocess.problem()
    return sgd.train(net, params, X, y, key=key, epochs=epochs, optimizer=optimizer,
                     **_train_subprocess.SETTINGS)


class Crash(Exception):
    pass


def test_resume_after_crash_is_bitwise_the_same_run(tmp_path):
    net, params, X, y, key, optimizer = _train_subprocess.problem()
    kwargs = dict(folder=tmp_path, key=key, epochs=8, optimizer=optimizer,
                  **_train_subprocess.SETTINGS)

    def crash_after_4(epoch, *_):
        if epoch == 4:
            raise Crash

    with pytest.raises(Crash):
        checkpoint.train(net, params, X, y, on_epoch=crash_after_4, every=2, **kwargs)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [7 * 2, 7 * 4]
    lines = []
    resumed, history = checkpoint.train(net, params, X, y, log=lines.append, every=2, **kwargs)
    assert lines == [f"resumed from {tmp_path / 'checkpoint_000000000028.npz'} at epoch 4"]
    expected, expected_history = uninterrupted(8)
    assert_same_tree(resumed, expected)
    assert history == expected_history


def test_resume_refuses_other_settings(tmp_path):
    net, params, X, y, key, optimizer = _train_subprocess.problem()
    settings = dict(_train_subprocess.SETTINGS, optimizer=optimizer)
    checkpoint.train(net, params, X, y, folder=tmp_path, key=key, epochs=1, **settings)
    with pytest.raises(ValueError, match="batch_size=16, this run has 8"):
        checkpoint.train(net, params, X, y, folder=tmp_path, key=key, epochs=2,
                         **dict(settings, batch_size=8))
    with pytest.raises(ValueError, match="another PRNG key"):
        checkpoint.train(net, params, X, y, folder=tmp_path, key=jax.random.key(5), epochs=2,
                         **settings)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        checkpoint.train(net, params, X, y, folder=tmp_path, key=key, epochs=2, resume=False,
                         **settings)


def test_experiment_options_checkpoint_and_resume(tmp_path, capsys):
    from experiments import common

    p = common.parser("demo", "A demo.")
    common.add_training_args(p, epochs=2, alpha=0.1, batch_size=16)
    common.add_checkpoint_args(p)
    net, params, X, y, key, optimizer = _train_subprocess.problem()

    def run(*options):
        args = p.parse_args(["--runs-dir", str(tmp_path), *options])
        folder = common.run_dir(args, "demo")
        return folder, common.train_with_checkpoints(
            args, folder, net, params, X, y, key=key, tag="manual", epochs=args.epochs,
            optimizer=optimizer, **_train_subprocess.SETTINGS)

    folder, _ = run("--out", "r1", "--checkpoint-every", "1", "--keep-checkpoints", "1")
    assert os.listdir(folder / "checkpoints" / "manual") == ["checkpoint_000000000014.npz"]
    with pytest.raises(SystemExit, match="exists"):
        run("--out", "r1", "--checkpoint-every", "1")
    with pytest.raises(SystemExit, match="--resume needs --out"):
        run("--resume")
    _, (resumed, history) = run("--out", "r1", "--resume", "--epochs", "4")
    assert "at epoch 2" in capsys.readouterr().err
    expected, expected_history = uninterrupted(4)
    assert_same_tree(resumed, expected)
    assert history == expected_history


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    """SIGKILL a training process after its first checkpoint, resume it in another."""
    folder, out = tmp_path / "checkpoints", tmp_path / "final.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    command = [sys.executable, str(ROOT / "tests" / "_train_subprocess.py"), str(folder),
               str(out), "--epochs", "30"]
    trainer = subprocess.Popen(command + ["--sleep", "0.25"], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.list_checkpoints(folder):
            assert trainer.poll() is None, trainer.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=30)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(timeout=30)
        trainer.stdout.close()
    assert trainer.returncode == -signal.SIGKILL
    assert not out.exists()
    killed_after = checkpoint.list_checkpoints(folder)[-1][0] // 7  # 7 steps per epoch
    assert 1 <= killed_after < 30

    finish = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=180)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    resumed_at = int(finish.stdout.split(" at epoch ")[1].split()[0])
    assert resumed_at >= killed_after
    assert f"epoch {resumed_at - 1} " not in finish.stdout  # nothing before it was redone

    expected, history = uninterrupted(30)
    with np.load(out, allow_pickle=False) as final:
        np.testing.assert_array_equal(final["loss"], history["loss"])
        for i, leaf in enumerate(jax.tree.leaves(expected)):
            got = final[f"leaf_{i}"]
            assert got.dtype == np.float64
            assert np.max(np.abs(got - np.asarray(leaf))) == 0.0
            np.testing.assert_array_equal(got, np.asarray(leaf))
