"""Shared test fixtures: small networks and matching random data for every output/loss pair."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxnn import DenseNetwork

PAIRS = [
    ("identity", "squared_error"),
    ("sigmoid", "logistic"),
    ("softmax", "softmax"),
    ("softmax", "cross_entropy"),
    ("sigmoid", "squared_error"),
    ("softmax", "squared_error"),
]


def targets(key, output: str, loss: str, m: int, k: int, dtype):
    """Targets of the right kind for an (output, loss) pair: labels, probabilities or reals."""
    if loss == "softmax":
        return jax.random.randint(key, (m,), 0, k)
    if output == "softmax":
        return jax.nn.softmax(jax.random.normal(key, (m, k), dtype))
    if output == "sigmoid":
        return (jax.random.uniform(key, (m, k)) > 0.5).astype(dtype)
    return jax.random.normal(key, (m, k), dtype)


def problem(hidden, output, loss, depth, dtype=jnp.float64, m=6, n_0=4, width=5, seed=0):
    """(net, params, X, Y) with ``depth`` layers (depth - 1 hidden layers of ``width``)."""
    k = 3 if output == "softmax" else 2
    net = DenseNetwork((n_0,) + (width,) * (depth - 1) + (k,), hidden, output, loss)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = net.init(k1, "xavier_normal", dtype)
    params = [{"W": p["W"], "b": 0.1 * jax.random.normal(k, p["b"].shape, dtype)}
              for p, k in zip(params, jax.random.split(k3, len(params)), strict=True)]
    X = jax.random.normal(k2, (m, n_0), dtype)
    return net, params, X, targets(k3, output, loss, m, k, dtype)


# --- experiments' --smoke runs ---------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def smoke(tmp_path, *extra):
    return ["--runs-dir", str(tmp_path), "--no-progress", "--smoke", *extra]


def check_run(result: dict, name: str, pngs: int = 1) -> dict:
    """The run folder of an experiment's --smoke run holds a results.json with
    config/environment/summary and at least ``pngs`` valid PNGs."""
    folder = Path(result["folder"])
    assert folder.parent.name == name
    assert isinstance(result["summary"], dict)
    with open(folder / "results.json") as f:
        saved = json.load(f)
    assert saved["environment"]["jax"] == jax.__version__
    assert saved["environment"]["backend"] == jax.default_backend()
    assert saved["config"]["smoke"] is True
    assert "summary" in saved
    images = sorted(folder.glob("*.png"))
    assert len(images) >= pngs
    for image in images:
        assert image.read_bytes()[:8] == PNG_SIGNATURE
    return saved


def write_cifar_batches(folder: Path, per_batch: int = 40, seed: int = 0,
                        binary: bool = False) -> Path:
    """Small CIFAR-10 python batches (data_batch_1 .. 5, test_batch) in folder, as the real
    ones are laid out (a pickled dict of b"data", uint8 (n, 3072) red-green-blue planes,
    and b"labels"); each class has its own colour plus noise, so it can be learned. With
    binary=True the same images as the binary batches (data_batch_1.bin, ...: a label
    byte and 3072 pixel bytes per record)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, (10, 3))
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        images = colours[labels][:, :, None, None] + rng.normal(0, 20, (per_batch, 3, 32, 32))
        data = np.clip(images, 0, 255).astype(np.uint8).reshape(per_batch, 3072)
        if binary:
            records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
            (folder / f"{name}.bin").write_bytes(records.tobytes())
            continue
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                         b"data": data}, f, protocol=2)
    return folder
