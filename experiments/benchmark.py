"""How fast is a training step, and how close does it come to the machine's matrix products?

Question: a training step (forward, gradient, update W ← W − α ∂L/∂W under one ``jit``,
``sgd.make_step``) can take its gradient from the hand-written δ recursion ("manual") or
from ``jax.grad`` ("autodiff"). How long does each take on five workloads, how many of
the machine's GEMM FLOP/s does it reach, what does running an epoch as one ``lax.scan``
(``sgd.run_epoch``) save over calling the jitted step from Python, and how much memory
does training take beyond the parameters and activations?

Workloads (float32, ReLU hidden layers, softmax output with the softmax loss on integer
labels, explicit SGD, synthetic data):

    mlp_small  64-128-10, batch 32
    mlp_mnist  784-512-512-10, batch 128
    mlp_wide   4096-4096-4096-10, batch 512 (bound by its matrix products)
    cnn_small  28x28x1 -> conv 3x3x32 -> relu -> 2x2 max-pool -> conv 3x3x64 -> relu
               -> 2x2 max-pool -> dense 10, batch 64
    cnn_color  64x64x3 -> conv 4x4x16 -> relu -> 2x2 max-pool -> conv 3x3x32 -> relu
               -> 2x2 max-pool -> dense 2, batch 32

Contenders, timed interleaved in one process (every repeat takes one sample of each
contender, in a rotating order, so a slow moment of a shared machine hits all alike; a
sample is back-to-back calls for ``--min-sample`` seconds, since the first call after a
pause pays for waking threads and refilling caches); the figures are medians over
repeats, and compilation is timed apart. The manual/autodiff pair (with the
GEMM for mlp_wide) is one group; numpy and torch form a second group with the manual
step as its anchor, since their worker threads, spinning after each call, would slow
whichever JAX step came next:

    manual / autodiff      one compiled step (forward, gradient, update)
    numpy                  the same step written in numpy (dense workloads but mlp_wide),
                           with the BLAS's threads and with one (threadpoolctl); the
                           faster of the two is the reference
    torch                  PyTorch eager with autograd (with --peers): on the CPU with its
                           threads and with one, the faster counts; on CUDA when JAX runs
                           on a GPU
    flax / equinox         the same network in Flax (linen) and in Equinox, its
                           jax.grad step under one jit (with --peers, where they import;
                           ``experiments.jax_peers``): JAX programs, timed in the
                           manual/autodiff group
    scan / loop            an epoch of 50 steps as one lax.scan (manual and autodiff),
                           or as 50 calls of the compiled manual step from Python
                           (contiguous minibatches); not for mlp_wide
    scan floor             (mlp_small) the same scan whose body only gathers the
                           minibatch: the cost of the loop itself, the epoch's
                           shuffle included
    shuffle                (mlp_small) that shuffle alone (``sgd.batch_indices``): one
                           sort of random keys per epoch, which the Python loop, on
                           contiguous minibatches, does not pay
    conv_method            (CNNs) step and 10-step scan of both gradients with each
                           ``CNN.conv_method``, im2col (the default) and lax
    GEMM 2048              jnp.dot of two 2048x2048 float32 matrices: the ceiling,
                           interleaved with the mlp_wide steps (else timed alone)

FLOP counting rule (``step_flops``): only matrix products and convolutions count, 2
FLOPs per multiply-add. A dense layer n_in -> n_out on m examples is one GEMM of
2·m·n_in·n_out forward and two backward (∂L/∂W = Δᵀ A and the input gradient Δ W),
except that the network's first layer has no input gradient. A convolution counts
2·(m·H_out·W_out·C_out)·(kh·kw·C_in) per GEMM-equivalent, forward once and backward
twice, likewise. Biases, activations, pooling, the loss and the update are not counted.

Memory (dense workloads: mlp_wide, or mlp_mnist without it): a fresh process per
setting of ``skip_nonfinite`` compiles an epoch of 2 steps from shapes alone, resets its
peak resident set (Linux ``/proc/self/clear_refs``), makes the parameters and data,
resets it again and trains; the peak RSS above the RSS before the arrays is set against
the parameters, the optimiser state (none for explicit SGD) and one batch's activations.
XLA's own accounting of the compiled epoch (arguments + outputs − donated + temporaries)
is reported beside it. The epoch is the manual one with the explicit update, which on
mlp_wide updates each W^[l] in place, 8 MiB of ∂L/∂W^[l] at a time
(``DenseNetwork.manual_descent``, ``jaxnn.fast.descent``; ``sgd.descends``).

Malloc: like every experiment (``common.setup``), the benchmark makes glibc's malloc keep
freed memory for reuse (``common.retain_freed_memory``; ``--system-malloc`` leaves it),
for all contenders alike, torch and numpy included; otherwise each call of a compiled
CNN step faults its temporaries in afresh. Minor page faults per step are reported.

Expected (2 CPU cores): manual and autodiff within a few percent of each other on the
dense workloads (the same matrix products; single runs scatter by about ±8% on a shared
machine; the manual ∂L/∂W products run on YNNPACK, autodiff's on Eigen) and the manual
CNN steps faster than the autodiff ones; mlp_wide at about the GEMM ceiling; mlp_small
bound by per-operation overheads: its scanned step beats numpy's, but only by 1.5-2x
the Python loop's, since JAX's asynchronous dispatch already hides most of the loop's
Python cost and the scan's own floor (shuffle, loop and minibatch gather) is a quarter
to a third of a step. The CNNs run well below the
ceiling (small convolutions, im2col copies, weight gradients that contract over
100 000 rows). Targets the run reports, never asserts: manual <= 1.05x autodiff on every
workload; mlp_wide >= 80% of the GEMM ceiling; mlp_small's scanned step faster than
numpy's and >= 3x faster than the Python loop's; CNN steps at least as fast as torch's
and the manual step <= 1.05x Flax's and Equinox's (with --peers); peak RSS of the
mlp_wide epoch <= 1.5x params + state + activations
(1.2-1.3x expected: the in-place update holds one 8 MiB block of a gradient, the data
and one batch's temporaries).

A busy machine spoils timings (one run saw its GEMM ceiling fall from 207 to 54 GFLOP/s).
The ceiling is therefore measured again after every workload; a workload around which it
fell below ``--noisy-below`` (70%) of the best measured in the run is marked "noisy", and
its timing targets read "noisy" instead of "NO". ``ratios.png`` plots the ratios per
workload (manual/autodiff for the step and the scanned epoch, loop/scan, and numpy's and
torch's step over the manual one where measured), hatched where noisy.

``--quick`` (about a minute on 2 cores) skips mlp_wide, the memory measurement and
the conv_method comparison, and times epochs of 10 steps; ``--smoke`` runs a couple of
steps of each workload (mlp_wide made narrow, CNN batches of 8, no warm-up calls) and
makes no timing claims. ``--peers``
adds PyTorch, and Flax and Equinox where they import; it exits with status 2 when torch
cannot be imported.
"""

import argparse
import dataclasses
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments import common, jax_peers

ROOT = Path(__file__).resolve().parent.parent
GEMM_N = 2048


@dataclass(frozen=True)
class Workload:
    """A workload: dense sizes, or a CNN's input shape, feature layers and dense sizes."""

    name: str
    batch: int
    sizes: tuple[int, ...] = ()
    input_shape: tuple[int, int, int] | None = None
    layers: tuple = ()  # ("conv", filters, kernel) and ("max_pool", window)
    epoch: bool = True  # time scan vs loop epochs
    numpy: bool = False  # time the numpy step

    @property
    def is_cnn(self) -> bool:
        return self.input_shape is not None


WORKLOADS = {
    w.name: w
    for w in (
        Workload("mlp_small", 32, (64, 128, 10), numpy=True),
        Workload("mlp_mnist", 128, (784, 512, 512, 10), numpy=True),
        Workload("mlp_wide", 512, (4096, 4096, 4096, 10), epoch=False),
        Workload("cnn_small", 64, (10,), (28, 28, 1),
                 (("conv", 32, 3), ("max_pool", 2), ("conv", 64, 3), ("max_pool", 2))),
        Workload("cnn_color", 32, (2,), (64, 64, 3),
                 (("conv", 16, 4), ("max_pool", 2), ("conv", 32, 3), ("max_pool", 2))),
    )
}
SMOKE_SIZES = {"mlp_wide": ((512, 512, 512, 10), 64)}


def workload(name: str, smoke: bool = False) -> Workload:
    """The named workload; with smoke=True mlp_wide shrinks to 512 wide, batch 64, and
    the CNNs to batches of 8."""
    w = WORKLOADS[name]
    if smoke and name in SMOKE_SIZES:
        sizes, batch = SMOKE_SIZES[name]
        w = Workload(w.name, batch, sizes, epoch=w.epoch, numpy=w.numpy)
    elif smoke and w.is_cnn:
        w = dataclasses.replace(w, batch=8)
    return w


def build(w: Workload, dtype, seed: int, n_batches: int = 1, model_only: bool = False):
    """(model, params, X, Y): He-initialised parameters and n_batches·batch synthetic examples.

    With model_only=True, just the model.
    """
    import jax

    from jaxnn import DenseNetwork
    from jaxnn.cnn import CNN, Conv, MaxPool

    if w.is_cnn:
        layers = [Conv(spec[1], spec[2]) if spec[0] == "conv" else MaxPool(spec[1])
                  for spec in w.layers]
        model = CNN(w.input_shape, layers, w.sizes, "relu", "softmax", "softmax")
        x_shape = w.input_shape
    else:
        model = DenseNetwork(w.sizes, "relu", "softmax", "softmax")
        x_shape = (w.sizes[0],)
    if model_only:
        return model
    k_init, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params = model.init(k_init, "he", dtype)
    m = n_batches * w.batch
    X = jax.random.normal(k_x, (m, *x_shape), dtype)
    Y = jax.random.randint(k_y, (m,), 0, model.dense[-1] if w.is_cnn else w.sizes[-1])
    return model, params, X, Y


def layer_shapes(w: Workload) -> list[tuple]:
    """("conv", out elements per example, kernel volume) or ("dense", n_in, n_out), in order."""
    shapes = []
    if w.is_cnn:
        H, W_, C = w.input_shape
        for spec in w.layers:
            if spec[0] == "conv":
                k = spec[2]
                H, W_ = H - k + 1, W_ - k + 1
                shapes.append(("conv", H * W_ * spec[1], k * k * C))
                C = spec[1]
            else:
                H, W_ = H // spec[1], W_ // spec[1]
        sizes = (H * W_ * C, *w.sizes)
    else:
        sizes = w.sizes
    shapes += [("dense", n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
    return shapes


def step_flops(w: Workload) -> dict:
    """FLOPs of one step by the counting rule of the module docstring."""
    forward = backward = 0
    for l, (_, a, b) in enumerate(layer_shapes(w)):
        gemm = 2 * w.batch * a * b
        forward += gemm
        backward += gemm if l == 0 else 2 * gemm
    return {"forward": forward, "backward": backward, "total": forward + backward}


def activation_bytes(w: Workload, itemsize: int) -> int:
    """Bytes of one batch's input, z^[l] and a^[l] of every layer (what backprop keeps)."""
    total = w.batch * (math.prod(w.input_shape) if w.is_cnn else w.sizes[0])
    for kind, a, b in layer_shapes(w):
        total += 2 * w.batch * (a if kind == "conv" else b)
    return total * itemsize


# --------------------------------------------------------------------------- timing


def interleave(contenders: dict[str, Callable], repeats: int, *, min_sample: float = 0.02,
               warmup: int = 1, settle: float = 0.01) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument contender, sampled interleaved.

    Each contender runs ``warmup`` times untimed, then once more to choose how many calls
    one sample takes (enough for ``min_sample`` seconds). Every repeat then takes one
    sample of each contender, starting from a different one each time, after a pause of
    ``settle`` seconds: XLA's, OpenBLAS's and OpenMP's worker threads spin for a while
    after their last task, and would otherwise take the cores from the next contender.
    A contender's result is waited for with ``jax.block_until_ready`` (numpy and torch
    results pass through unchanged).
    """
    import jax

    names = list(contenders)
    number = {}
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(contenders[name]())
        start = time.perf_counter()
        jax.block_until_ready(contenders[name]())
        number[name] = max(1, math.ceil(min_sample / max(time.perf_counter() - start, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(settle)
            start = time.perf_counter()
            for _ in range(number[name]):
                jax.block_until_ready(contenders[name]())
            samples[name].append((time.perf_counter() - start) / number[name])
    return samples


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over repeats of a_r / b_r: paired samples taken close together."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


class Trainer:
    """A compiled step applied to its own evolving (params, opt_state), one call per step.

    Feeding the outputs back keeps the call valid where the step donates its inputs (GPU).
    """

    def __init__(self, compiled, params, opt_state, batches, alpha):
        self.compiled, self.params, self.opt_state = compiled, params, opt_state
        self.batches, self.alpha = batches, alpha

    def step(self):
        X, Y = self.batches[0]
        self.params, self.opt_state, loss = self.compiled(self.params, self.opt_state, X, Y,
                                                          self.alpha)
        return self.params, loss

    def loop(self):
        for X, Y in self.batches:
            self.params, self.opt_state, loss = self.compiled(self.params, self.opt_state, X, Y,
                                                              self.alpha)
        return self.params, loss


def compile_step(model, source, params, X, Y, alpha):
    """(compiled ``sgd.make_step``, compile seconds, XLA cost, HLO op counts)."""
    from jaxnn import sgd

    compiled, seconds = common.timed_compile(sgd.make_step(model, source), params, (), X, Y,
                                             alpha)
    return compiled, seconds, common.xla_cost(compiled), common.hlo_ops(compiled)


def scan_contender(w, model, source, params, X, Y, alpha):
    """(an epoch over X as one compiled lax.scan of ``source`` steps, its compile seconds).

    The epoch function ``sgd.run_epoch`` uses (it donates params), compiled ahead; each
    call continues from the parameters the previous call returned.
    """
    import jax

    from jaxnn import sgd

    epoch_fn = sgd.epoch_donating
    static = {"model": model, "source": source, "optimizer": None, "batch_size": w.batch}
    key = jax.random.key(0)
    scan, seconds = common.timed_compile(epoch_fn, params, (), X, Y, key, alpha, **static)
    state = {"params": copy_of(params), "opt_state": ()}

    def epoch():
        state["params"], state["opt_state"], losses, _ = scan(state["params"], state["opt_state"],
                                                               X, Y, key, alpha)
        return state["params"], losses

    return epoch, seconds


def epoch_contenders(w, model, params, X, Y, alpha, steps: int, step) -> tuple[dict, dict]:
    """Scan epochs (manual, autodiff), the Python-loop epoch, and for mlp_small the floor.

    ``step`` is the compiled manual step, which the Python loop calls ``steps`` times on
    contiguous minibatches.
    """
    import jax
    import jax.numpy as jnp

    from jaxnn import sgd

    contenders, compile_s = {}, {}
    for source, name in (("manual", "scan"), ("autodiff", "scan autodiff")):
        contenders[name], compile_s[name] = scan_contender(w, model, source, params, X, Y, alpha)
    batches = [(X[i * w.batch:(i + 1) * w.batch], Y[i * w.batch:(i + 1) * w.batch])
               for i in range(steps)]
    contenders["loop"] = Trainer(step, copy_of(params), (), batches, alpha).loop
    if w.name == "mlp_small":
        key = jax.random.key(0)

        def floor_body(carry, idx):
            return carry, jnp.sum(X[idx]) + jnp.sum(Y[idx]).astype(X.dtype)

        @jax.jit
        def floor(params, X, Y, key):
            batches = sgd.batch_indices(key, X.shape[0], w.batch)
            return jax.lax.scan(floor_body, params, batches)

        floor_c, compile_s["scan floor"] = common.timed_compile(floor, params, X, Y, key)
        contenders["scan floor"] = lambda: floor_c(params, X, Y, key)
        # the epoch's permutation alone: part of the floor (and of the scan), not of the loop
        shuffle = jax.jit(sgd.batch_indices, static_argnums=(1, 2))
        shuffle_c, compile_s["shuffle"] = common.timed_compile(shuffle, key, X.shape[0], w.batch)
        contenders["shuffle"] = lambda: shuffle_c(key)
    return contenders, compile_s


def conv_method_contenders(w, model, params, X, Y, alpha, compiled_steps) -> tuple[dict, dict]:
    """For a CNN: step and scanned epoch of both sources with each conv_method.

    The evidence for the training default: with "lax", the convolutions ``jax.grad``
    derives keep swapped batch/channel layouts, which XLA's CPU backend runs on a
    generic path inside a lax.scan. ``compiled_steps`` (by source) are the model's own
    steps, reused for its conv_method.
    """
    contenders, compile_s = {}, {}
    Xb, Yb = X[: w.batch], Y[: w.batch]
    for method in ("im2col", "lax"):
        variant = dataclasses.replace(model, conv_method=method)
        for source in ("manual", "autodiff"):
            name = f"{method} {source}"
            if method == model.conv_method:
                compiled, compile_s[f"{name} step"] = compiled_steps[source], 0.0
            else:
                compiled, compile_s[f"{name} step"], _, _ = compile_step(variant, source, params,
                                                                         Xb, Yb, alpha)
            contenders[f"{name} step"] = Trainer(compiled, copy_of(params), (), [(Xb, Yb)],
                                                 alpha).step
            contenders[f"{name} scan"], compile_s[f"{name} scan"] = scan_contender(
                w, variant, source, params, X, Y, alpha)
    return contenders, compile_s


def minor_faults(fn: Callable, calls: int = 3) -> float:
    """Minor page faults per call of fn (memory the process touches for the first time)."""
    import jax

    jax.block_until_ready(fn())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        jax.block_until_ready(fn())
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def gemm_contender(dtype):
    """(compiled jnp.dot of two GEMM_N x GEMM_N matrices, its FLOPs)."""
    import jax
    import jax.numpy as jnp

    k_a, k_b = jax.random.split(jax.random.key(1))
    A = jax.random.normal(k_a, (GEMM_N, GEMM_N), dtype)
    B = jax.random.normal(k_b, (GEMM_N, GEMM_N), dtype)
    compiled = jax.jit(jnp.dot).lower(A, B).compile()
    return (lambda: compiled(A, B)), 2 * GEMM_N**3


# --------------------------------------------------------------------------- references


def numpy_step(params, X, Y, alpha: float) -> Callable:
    """The manual step in numpy, updating its own copy of params in place; returns a callable.

    Z^[l]ᵀ = A^[l-1]ᵀ W^[l]ᵀ + b^[l]ᵀ, ReLU, softmax loss; Δ^[N] = softmax(Z^[N]) − e_y,
    Δ^[l] = (Δ^[l+1] W^[l+1]) ∘ 1[Z^[l] > 0], W^[l] −= α Δ^[l]ᵀ A^[l-1] / m, b likewise.
    """
    Ws = [np.array(p["W"]) for p in params]
    bs = [np.array(p["b"]) for p in params]
    X, Y = np.asarray(X), np.asarray(Y)
    m, rows = X.shape[0], np.arange(X.shape[0])
    alpha = X.dtype.type(alpha)

    def step():
        As, Zs = [X], []
        for l, (W, b) in enumerate(zip(Ws, bs, strict=True)):
            Z = As[-1] @ W.T + b
            Zs.append(Z)
            As.append(np.maximum(Z, 0) if l < len(Ws) - 1 else Z)
        Z = Zs[-1]
        shifted = Z - Z.max(axis=1, keepdims=True)
        expz = np.exp(shifted)
        total = expz.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, Y]))
        Delta = expz / total
        Delta[rows, Y] -= 1
        for l in range(len(Ws), 0, -1):
            dW = Delta.T @ As[l - 1] / m
            db = Delta.sum(axis=0) / m
            if l > 1:
                Delta = (Delta @ Ws[l - 1]) * (Zs[l - 2] > 0)
            Ws[l - 1] -= alpha * dW
            bs[l - 1] -= alpha * db
        return loss

    return step


def numpy_contenders(params, X, Y, alpha: float) -> dict[str, Callable]:
    """The numpy step with the BLAS's own threads, and (with threadpoolctl) with one thread.

    On a small, shared machine OpenBLAS's threads can cost more than they bring; the
    faster of the two is the reference.
    """
    contenders = {"numpy": numpy_step(params, X, Y, alpha)}
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return contenders
    blas = ThreadpoolController().select(user_api="blas").lib_controllers
    if not blas:
        return contenders
    one = numpy_step(params, X, Y, alpha)

    def single_thread():
        threads = [lib.num_threads for lib in blas]
        for lib in blas:
            lib.set_num_threads(1)
        try:
            return one()
        finally:
            for lib, n in zip(blas, threads, strict=True):
                lib.set_num_threads(n)

    contenders["numpy 1 thread"] = single_thread
    return contenders


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_step(w: Workload, model, params, X, Y, alpha: float) -> tuple[Callable, float]:
    """(PyTorch eager step on the same workload and parameters, its loss at the start).

    Autograd gradient, then p −= α ∂L/∂p under no_grad. Images are NCHW for torch; the
    feature map is flattened in (H, W, C) order, as ``conv.flatten`` does, so that the
    function (and its starting loss) equals the JAX model's. Runs on the CPU, or on CUDA
    when JAX runs on a GPU and torch sees one; reading the loss waits for the step.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    device = torch.device("cpu" if _torch_on_cpu(X) else "cuda")

    def tensor(a):
        return torch.from_numpy(np.array(a)).to(device).requires_grad_(True)

    dense_params = params["dense"] if w.is_cnn else params
    conv_W = [tensor(np.transpose(np.asarray(p["W"]), (3, 2, 0, 1))) for p in
              (params["conv"] if w.is_cnn else [])]
    conv_b = [tensor(p["b"]) for p in (params["conv"] if w.is_cnn else [])]
    dense_W = [tensor(p["W"]) for p in dense_params]
    dense_b = [tensor(p["b"]) for p in dense_params]
    all_params = conv_W + conv_b + dense_W + dense_b
    x = torch.from_numpy(np.array(X)).to(device)
    if w.is_cnn:
        x = x.permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.array(Y)).long().to(device)

    def loss_fn():
        a, convs = x, iter(zip(conv_W, conv_b, strict=True))
        for spec in w.layers:
            if spec[0] == "conv":
                W, b = next(convs)
                a = torch.relu(F.conv2d(a, W, b))
            else:
                a = F.max_pool2d(a, spec[1])
        if w.is_cnn:
            a = a.permute(0, 2, 3, 1).flatten(1)
        for l, (W, b) in enumerate(zip(dense_W, dense_b, strict=True)):
            a = F.linear(a, W, b)
            if l < len(dense_W) - 1:
                a = torch.relu(a)
        return F.cross_entropy(a, y)

    with torch.no_grad():
        start_loss = float(loss_fn())

    def step():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, all_params)
        with torch.no_grad():
            for p, g in zip(all_params, grads, strict=True):
                p.sub_(alpha * g)
        return float(loss.detach())

    return step, start_loss


def torch_contenders(w, model, params, X, Y, alpha: float) -> tuple[dict, float]:
    """PyTorch steps with its default intra-op threads and (on the CPU) with one thread."""
    import torch

    default_step, start_loss = torch_step(w, model, params, X, Y, alpha)
    contenders = {"torch": default_step}
    if _torch_on_cpu(X):
        one_step, _ = torch_step(w, model, params, X, Y, alpha)
        threads = torch.get_num_threads()

        def single_thread():
            torch.set_num_threads(1)
            try:
                return one_step()
            finally:
                torch.set_num_threads(threads)

        contenders["torch 1 thread"] = single_thread
    return contenders, start_loss


def _torch_on_cpu(X) -> bool:
    """Whether torch runs on the CPU: unless JAX's data is on a GPU and torch sees CUDA."""
    import torch

    on_gpu = any(d.platform == "gpu" for d in X.devices())
    return not (on_gpu and torch.cuda.is_available())


# --------------------------------------------------------------------------- memory

_CHILD = """
import json, sys
from experiments import benchmark
print(json.dumps(benchmark.memory_child(*sys.argv[1:])))
"""


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Reset VmHWM to the current resident set (Linux: write 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_child(name: str, dtype: str, device: str, smoke: str, skip: str) -> dict:
    """In a fresh process: compile an epoch of 2 steps of ``name``, then run it; bytes.

    The epoch is compiled from shapes alone, before any array exists; then the peak
    resident set is reset, and the parameters and data are made and trained on, so that
    ``train_peak`` (peak RSS minus the RSS before) holds what training needs and no
    compiler memory; the peak is reset once more after the arrays are made, so that the
    temporaries of their random initialisation are not counted either. glibc's malloc is
    left as it is here: it maps large blocks fresh and returns them, so they are all
    counted, and none reuses the compiler's freed memory.
    """
    import jax
    import jax.numpy as jnp

    from jaxnn import sgd

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if device != "default":
        jax.config.update("jax_default_device", jax.devices(device)[0])
    jnp.zeros(1).block_until_ready()
    base = _status_kib("VmRSS") * 1024
    w = workload(name, smoke == "1")
    model = build(w, jnp.dtype(dtype), 0, n_batches=2, model_only=True)
    shapes = jax.eval_shape(lambda: build(w, jnp.dtype(dtype), 0, n_batches=2)[1:])
    static = dict(model=model, source="manual", optimizer=None, batch_size=w.batch,
                  skip_nonfinite=skip == "1")
    abstract = (shapes[0], (), shapes[1], shapes[2], jax.random.key(0), jnp.asarray(0.01, dtype))
    compiled = sgd.epoch_donating.lower(*abstract, **static).compile()
    stats = compiled.memory_analysis()
    compile_peak = _status_kib("VmHWM") * 1024 - base
    before = _status_kib("VmRSS") * 1024
    _, params, X, Y = build(w, jnp.dtype(dtype), 0, n_batches=2)
    jax.block_until_ready((params, X, Y))
    arrays = _status_kib("VmRSS") * 1024 - before
    _reset_peak()  # what initialisation took beyond the arrays is gone: not counted
    params, _, losses, _ = compiled(params, (), X, Y, jax.random.key(0), jnp.asarray(0.01, dtype))
    jax.block_until_ready((params, losses))
    device_stats = jax.devices()[0].memory_stats() or {}
    xla = None
    if stats is not None:
        xla = (stats.argument_size_in_bytes + stats.output_size_in_bytes
               - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    return {"compile_extra_rss": compile_peak, "arrays_rss": arrays,
            "train_peak_rss": _status_kib("VmHWM") * 1024 - before,
            "xla_bytes": xla, "xla_temp_bytes": None if stats is None else stats.temp_size_in_bytes,
            "device_peak_bytes": device_stats.get("peak_bytes_in_use"),
            "loss": float(losses[-1])}


def memory(name: str, args) -> dict:
    """Memory of a training epoch (2 steps) of dense workload ``name`` against what it must hold.

    Two fresh processes (``memory_child``), with and without ``skip_nonfinite`` (which
    costs nothing in place; where the whole gradient comes first, its decision per step
    needs every gradient at once). Needed: the parameters, the optimiser state (none for
    explicit SGD) and one batch's activations; the 2 batches of data and a block of
    ∂L/∂W come on top.
    """
    import json

    w = workload(name, args.smoke)
    if w.is_cnn:
        raise ValueError("memory is measured on dense workloads")
    if not Path("/proc/self/clear_refs").exists():
        return {"workload": name, "skipped": "needs Linux /proc/self/clear_refs"}
    itemsize = np.dtype(args.dtype).itemsize
    params_bytes = sum(a * b + b for _, a, b in layer_shapes(w) if _ == "dense") * itemsize
    activations = activation_bytes(w, itemsize)
    needed = params_bytes + activations  # explicit SGD keeps no optimiser state
    out = {"workload": name, "params_bytes": params_bytes, "opt_state_bytes": 0,
           "activation_bytes": activations, "needed_bytes": needed,
           "data_bytes": 2 * w.batch * (w.sizes[0] * itemsize + 4),
           "largest_gradient_bytes": max(a * b for _, a, b in layer_shapes(w)) * itemsize}
    for skip in ("1", "0"):
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, name, args.dtype, args.device or "default",
             "1" if args.smoke else "0", skip],
            cwd=ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child failed:\n{proc.stderr[-2000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        key = "skip" if skip == "1" else "no_skip"
        out[key] = child | {
            "ratio_rss": child["train_peak_rss"] / needed,
            "ratio_xla": None if child["xla_bytes"] is None else child["xla_bytes"] / needed}
    return out


# --------------------------------------------------------------------------- main


def copy_of(params):
    """A fresh copy of params, so that a step that donates its inputs (GPU) owns them."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(jnp.array, params)


def run_workload(w: Workload, args, dtype, ceiling=None) -> dict:
    """Compile and time every contender of one workload; returns its results."""
    import jax.numpy as jnp

    steps = 2 if args.smoke else args.epoch_steps
    model, params, X, Y = build(w, dtype, args.seed, n_batches=steps if w.epoch else 1)
    Xb, Yb = X[: w.batch], Y[: w.batch]
    alpha = jnp.asarray(args.alpha, dtype)
    flops = step_flops(w)
    out = {"batch": w.batch, "flops": flops, "compile_seconds": {}, "xla": {}, "hlo_ops": {}}
    steps_c, compiled_steps = {}, {}
    for source in ("manual", "autodiff"):
        compiled, seconds, cost, ops = compile_step(model, source, params, Xb, Yb, alpha)
        out["compile_seconds"][source] = seconds
        compiled_steps[source] = compiled
        out["xla"][source] = cost
        out["hlo_ops"][source] = {"entry": ops["entry"], "total": ops["total"],
                                  **{k: ops["by_opcode"].get(k, 0) for k in (
                                      "dot", "convolution", "transpose", "copy", "scatter",
                                      "reduce-window", "select-and-scatter", "fusion")}}
        steps_c[source] = Trainer(compiled, copy_of(params), (), [(Xb, Yb)], alpha).step
    start_loss = float(model.loss(params, Xb, Yb)) if args.peers else None
    if args.peers:
        for peer in jax_peers.available():
            call, start, seconds = jax_peers.STEPS[peer](w, params, Xb, Yb, args.alpha)
            steps_c[peer] = call
            out["compile_seconds"][peer] = seconds
            out[f"{peer}_start_loss_vs_jax"] = abs(start - start_loss)
    if ceiling is not None:
        steps_c["gemm"] = ceiling[0]
    warm = 0 if args.smoke else 1  # smoke: no timing claims, so no warm-up calls
    samples = interleave(steps_c, args.repeats, min_sample=args.min_sample, warmup=warm)
    # The references run in a group of their own, with the manual step as an anchor:
    # numpy's and torch's worker threads would otherwise disturb the manual/autodiff pair.
    references = {}
    if w.numpy:
        references.update(numpy_contenders(params, Xb, Yb, args.alpha))
    if args.peers:
        peers, start = torch_contenders(w, model, params, Xb, Yb, args.alpha)
        references.update(peers)
        out["torch_start_loss_vs_jax"] = abs(start - start_loss)
    if references:
        references["manual (with references)"] = steps_c["manual"]
        samples.update(interleave(references, args.repeats, min_sample=args.min_sample,
                                  warmup=warm))
    faults = {k: steps_c[k] for k in ("manual", "autodiff")}
    if w.epoch:
        epochs, compile_s = epoch_contenders(w, model, params, X, Y, alpha, steps,
                                             compiled_steps["manual"])
        out["compile_seconds"].update({f"epoch {k}": v for k, v in compile_s.items()})
        samples.update({f"epoch {k}": v for k, v in
                        interleave(epochs, args.epoch_repeats, warmup=warm).items()})
        faults.update({f"epoch {k}": epochs[k] for k in ("scan", "scan autodiff")})
    out["minor_faults_per_step"] = {
        k: minor_faults(fn, 1 if args.smoke else 3) / (steps if k.startswith("epoch") else 1)
        for k, fn in faults.items()}
    if w.is_cnn and args.conv_methods:
        n = min(steps, args.method_steps)
        methods, compile_s = conv_method_contenders(w, model, params, X[: n * w.batch],
                                                    Y[: n * w.batch], alpha, compiled_steps)
        out["compile_seconds"].update({f"method {k}": v for k, v in compile_s.items()})
        per_call = interleave(methods, args.epoch_repeats, warmup=warm)
        out["conv_methods_seconds_per_step"] = {
            k: float(np.median(v)) / (n if k.endswith("scan") else 1) for k, v in per_call.items()}
    out["samples"] = samples
    out["median_seconds"] = {k: float(np.median(v)) for k, v in samples.items()}
    med = out["median_seconds"]
    out["manual_over_autodiff"] = median_ratio(samples["manual"], samples["autodiff"])
    out["manual_over_autodiff_of_medians"] = med["manual"] / med["autodiff"]
    out["gflops"] = {k: flops["total"] / med[k] / 1e9 for k in (*steps_c, *references)
                     if k != "gemm"}
    if ceiling is not None:
        out["gemm_gflops"] = ceiling[1] / med["gemm"] / 1e9
    for peer in ("numpy", "torch", *jax_peers.PEERS):
        options = [k for k in (peer, f"{peer} 1 thread") if k in med]
        if options:
            out[f"{peer}_best_seconds"] = min(med[k] for k in options)
    if w.epoch:
        out["per_step_seconds"] = {k: med[f"epoch {k}"] / steps for k in epochs}
        out["loop_over_scan"] = median_ratio(samples["epoch loop"], samples["epoch scan"])
        out["scan_manual_over_autodiff"] = median_ratio(samples["epoch scan"],
                                                        samples["epoch scan autodiff"])
        if "numpy" in med:
            out["numpy_over_scan_step"] = (out["numpy_best_seconds"]
                                           / out["per_step_seconds"]["scan"])
    return out


def targets(results: dict, ceiling_gflops: float, memory: dict | None = None) -> list[dict]:
    """Every target of the benchmark with its measured value and whether it was met.

    Each row names its workload and whether it is a timing (which a busy machine can
    spoil; memory is not).
    """
    rows = []

    def add(workload, target, value, met, timing=True):
        rows.append({"target": f"{workload}: {target}", "value": value, "met": bool(met),
                     "workload": workload, "timing": timing})

    for name, r in results.items():
        add(name, "manual step <= 1.05x autodiff (median ratio)", r["manual_over_autodiff"],
            r["manual_over_autodiff"] <= 1.05)
    if "mlp_wide" in results:
        r = results["mlp_wide"]
        ceiling = r.get("gemm_gflops", ceiling_gflops)
        for source in ("manual", "autodiff"):
            share = r["gflops"][source] / ceiling
            add("mlp_wide", f"{source} step >= 80% of the GEMM ceiling", share, share >= 0.8)
    for name, r in results.items():
        torch_s = r.get("torch_best_seconds")
        if name.startswith("cnn") and torch_s is not None:
            for source in ("manual", "autodiff"):
                ratio = r["median_seconds"][source] / torch_s
                add(name, f"{source} step / PyTorch eager step <= 1", ratio, ratio <= 1)
    for name, r in results.items():
        for peer in jax_peers.PEERS:
            peer_s = r.get(f"{peer}_best_seconds")
            if peer_s is not None:
                ratio = r["median_seconds"]["manual"] / peer_s
                add(name, f"manual step <= 1.05x the {peer.capitalize()} step", ratio,
                    ratio <= 1.05)
    if memory is not None and "skipped" not in memory and memory["workload"] == "mlp_wide":
        for key, label in (("skip", "default"), ("no_skip", "skip_nonfinite=False")):
            ratio = memory[key]["ratio_rss"]
            add(memory["workload"], f"({label}) peak RSS of training <= 1.5x params + state "
                "+ activations", ratio, ratio <= 1.5, timing=False)
    if "mlp_small" in results and "per_step_seconds" in results["mlp_small"]:
        r = results["mlp_small"]
        add("mlp_small", "numpy step / scanned step > 1", r["numpy_over_scan_step"],
            r["numpy_over_scan_step"] > 1)
        add("mlp_small", "Python-loop step / scanned step >= 3", r["loop_over_scan"],
            r["loop_over_scan"] >= 3)
    return rows


def noisy_workloads(ceilings: dict[str, dict], best: float, fraction: float) -> set[str]:
    """Workloads timed on a busy machine: the GEMM ceiling measured just before or just
    after them ({name: {"before": GFLOP/s, "after": GFLOP/s}}) fell below ``fraction`` of
    the best ceiling measured in the run."""
    return {name for name, c in ceilings.items()
            if min(c["before"], c["after"]) < fraction * best}


def verdicts(goals: list[dict], noisy: set[str]) -> list[dict]:
    """The targets as printed: met "yes"; not met "NO", or "noisy" where the machine was
    busy around that workload's timings (then the figure says nothing either way)."""
    rows = []
    for g in goals:
        spoiled = g["timing"] and g["workload"] in noisy
        verdict = "yes" if g["met"] else ("noisy" if spoiled else "NO")
        rows.append({"target": g["target"], "value": g["value"], "met": verdict})
    return rows


def duration(seconds: float | None) -> str:
    """A time for reading, 3 significant figures in ns, µs, ms or s: "52.1 µs", "28.1 ms"."""
    if seconds is None:
        return ""
    rounded = float(f"{seconds:.3g}")
    if rounded == 0:
        return "0 s"
    scale, unit = next(((scale, unit) for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs"))
                        if abs(rounded) >= scale), (1e-9, "ns"))
    value = rounded / scale
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f} {unit}"


def table_rows(results: dict, ceiling_gflops: float,
               noisy: set[str] = frozenset()) -> tuple[list[dict], list[dict]]:
    """The step table and the epoch table: times in µs/ms/s, ratios, GFLOP/s.

    "% ceiling" is against the GEMM ceiling measured around the workload (interleaved with
    it for mlp_wide), else ``ceiling_gflops``.
    """
    steps, epochs = [], []
    for name, r in results.items():
        med = r["median_seconds"]
        ceiling = r.get("gemm_gflops", r.get("ceiling_around", {}).get("gflops",
                                                                        ceiling_gflops))
        row = {"workload": name + (" (noisy)" if name in noisy else ""),
               "GFLOP": r["flops"]["total"] / 1e9,
               "manual step": duration(med["manual"]), "autodiff step": duration(med["autodiff"]),
               "manual/autodiff": r["manual_over_autodiff"],
               "manual GFLOP/s": r["gflops"]["manual"],
               "% ceiling": 100 * r["gflops"]["manual"] / ceiling}
        for peer in ("numpy", "torch", *jax_peers.PEERS):
            best = r.get(f"{peer}_best_seconds")
            if best is not None or peer in ("numpy", "torch"):
                row[f"{peer} step"] = duration(best)
        row["compile (m/a)"] = (f"{duration(r['compile_seconds']['manual'])} / "
                                f"{duration(r['compile_seconds']['autodiff'])}")
        steps.append(row)
        if "per_step_seconds" in r:
            per = r["per_step_seconds"]
            epochs.append({"workload": row["workload"], "scan /step": duration(per["scan"]),
                           "scan autodiff /step": duration(per["scan autodiff"]),
                           "loop /step": duration(per["loop"]),
                           "loop/scan": r["loop_over_scan"],
                           "floor /step": duration(per.get("scan floor")),
                           "shuffle /step": duration(per.get("shuffle")),
                           "numpy/scan": r.get("numpy_over_scan_step", "")})
    return steps, epochs


def method_rows(results: dict) -> list[dict]:
    """Time per step of each CNN's step and scanned epoch by conv_method and gradient source."""
    rows = []
    for name, r in results.items():
        per = r.get("conv_methods_seconds_per_step")
        if per is None:
            continue
        for method in ("im2col", "lax"):
            rows.append({"workload": name, "conv_method": method} | {
                f"{source} {kind}": duration(per[f"{method} {source} {kind}"])
                for kind in ("step", "scan") for source in ("manual", "autodiff")})
    return rows


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def ratio_panels(results: dict) -> list[tuple[str, str, dict[str, dict[str, float]], list]]:
    """[(title, y label, {series: {workload: ratio}}, [(reference line, label)])] of the plot."""
    pair = {"manual/autodiff step": {n: r["manual_over_autodiff"] for n, r in results.items()},
            "manual/autodiff scan": {n: r["scan_manual_over_autodiff"] for n, r in
                                     results.items() if "scan_manual_over_autodiff" in r}}
    loop = {"loop/scan (per step)": {n: r["loop_over_scan"] for n, r in results.items()
                                     if "loop_over_scan" in r}}
    peers = {}
    for peer in ("numpy", "torch", *jax_peers.PEERS):
        series = {n: r[f"{peer}_best_seconds"] / r["median_seconds"]["manual"]
                  for n, r in results.items() if f"{peer}_best_seconds" in r}
        if series:
            peers[f"{peer}/manual step"] = series
    panels = [("manual vs autodiff", "time ratio (< 1: manual faster)", pair,
               [(1.0, "equal"), (1.05, "target 1.05")]),
              ("scanned epoch vs Python loop", "time ratio (> 1: scan faster)", loop,
               [(1.0, "equal"), (3.0, "target 3 (mlp_small)")])]
    if peers:
        panels.append(("peers vs the manual step", "time ratio (> 1: jaxnn faster)", peers,
                       [(1.0, "equal")]))
    return panels


def plot_ratios(results: dict, noisy: set[str], folder) -> Path:
    """ratios.png: the benchmark's ratios per workload, bars hatched where noisy."""
    plt = common.pyplot()
    from matplotlib.patches import Patch

    panels = ratio_panels(results)
    names = list(results)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (title, ylabel, series, lines) in zip(axes[0], panels, strict=True):
        width = 0.8 / max(len(series), 1)
        handles = []
        for k, (label, values) in enumerate(series.items()):
            x = [names.index(n) + (k - (len(series) - 1) / 2) * width for n in values]
            bars = ax.bar(x, list(values.values()), width, color=f"C{k}")
            handles.append(Patch(color=f"C{k}", label=label))
            for bar, n in zip(bars, values, strict=True):
                if n in noisy:
                    bar.set_hatch("//")
                    bar.set_edgecolor("0.3")
        for value, label in lines:
            handles.append(ax.axhline(value, color="0.3" if value == 1 else "red", lw=1,
                                      ls="-" if value == 1 else "--", label=label))
        if noisy:
            handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//",
                                 label="noisy: machine busy"))
        ax.set_xticks(range(len(names)), [n + (" (noisy)" if n in noisy else "")
                                          for n in names], rotation=30, ha="right")
        top = max([v for values in series.values() for v in values.values()]
                  + [value for value, _ in lines])
        ax.set(title=title, ylabel=ylabel, ylim=(0, 1.55 * top))  # room for the legend
        ax.legend(handles=handles, fontsize=7, ncol=2, loc="upper left")
    fig.suptitle("benchmark ratios per workload (medians of paired repeats)"
                 + ("; hatched: machine busy" if noisy else ""))
    fig.tight_layout()
    return common.save_figure(fig, folder, "ratios.png")


def main(argv=None) -> dict:
    p = common.parser("benchmark", __doc__)
    p.add_argument("--quick", action="store_true",
                   help="about a minute: no mlp_wide, no memory, no conv_method comparison, "
                        "fewer repeats, epochs of 10 steps")
    p.add_argument("--peers", action="store_true",
                   help="also time PyTorch eager (needs torch installed), and Flax and "
                   "Equinox where they import")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated subset of " + ", ".join(WORKLOADS))
    p.add_argument("--repeats", type=int, default=15, help="interleaved repeats of the steps")
    p.add_argument("--epoch-repeats", type=int, default=7, help="interleaved repeats of epochs")
    p.add_argument("--epoch-steps", type=int, default=50, help="steps in a timed epoch")
    p.add_argument("--min-sample", type=float, default=0.1,
                   help="seconds of back-to-back calls in one sample of a step (at least one "
                        "call): single calls after a pause pay for waking threads and caches")
    p.add_argument("--alpha", type=float, default=1e-3, help="learning rate of the steps")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--conv-methods", action=argparse.BooleanOptionalAction, default=True,
                   help="time the CNNs with each conv_method, im2col and lax "
                        "(--no-conv-methods skips it)")
    p.add_argument("--method-steps", type=int, default=10,
                   help="steps in the scanned epochs of the conv_method comparison")
    p.add_argument("--noisy-below", type=float, default=0.7,
                   help="mark a workload's timings noisy when the GEMM ceiling measured "
                        "just before or after it falls below this fraction of the run's best")
    p.epilog = ("Writes runs/benchmark/<run>/: results.json and ratios.png (manual/autodiff, "
                "loop/scan and peers/manual per workload). --peers exits with status 2 "
                "when torch cannot be imported.")
    args = p.parse_args(argv)
    names = [n for n in args.workloads.split(",") if n]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workloads {unknown}; known: {list(WORKLOADS)}")
    if not names:
        p.error("--workloads names no workload")
    positive = {"--repeats": args.repeats, "--epoch-repeats": args.epoch_repeats,
                "--epoch-steps": args.epoch_steps, "--method-steps": args.method_steps}
    for flag, value in positive.items():
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if not (math.isfinite(args.min_sample) and args.min_sample >= 0):
        p.error(f"--min-sample must be a number of seconds >= 0, got {args.min_sample}")
    if not 0 < args.noisy_below <= 1:
        p.error(f"--noisy-below must lie in (0, 1], got {args.noisy_below}")
    if args.peers and not torch_available():
        print("--peers: torch cannot be imported here; install PyTorch's CPU build "
              "(pip install torch, see the README's Performance section) and run again.",
              file=sys.stderr)
        raise SystemExit(2)
    if args.quick:
        names = [n for n in names if n != "mlp_wide"]
        args.repeats, args.epoch_repeats, args.epoch_steps = 5, 3, 10
        args.min_sample = min(args.min_sample, 0.05)
        args.conv_methods, args.no_memory = False, True
    if args.smoke:
        args.repeats, args.epoch_repeats, args.method_steps = 1, 1, 2
        args.min_sample = 0.0
    common.setup(args)
    import jax

    dtype = common.dtype_of(args)
    folder = common.run_dir(args, "benchmark")
    load_start = load_average()
    memory_name = "mlp_wide" if "mlp_wide" in names else "mlp_mnist"  # the largest run
    if args.smoke:
        memory_name = "mlp_small"
    mem = None if args.no_memory else memory(memory_name, args)

    gemm, gemm_flops = gemm_contender(dtype)

    def measure_ceiling(repeats: int) -> tuple[float, list[float]]:
        samples = interleave({"gemm": gemm}, repeats, warmup=0 if args.smoke else 1)["gemm"]
        return gemm_flops / float(np.median(samples)) / 1e9, samples

    ceiling_gflops, ceiling_s = measure_ceiling(1 if args.smoke else 7)
    around = [ceiling_gflops]  # the ceiling before the first workload and after each
    results = {}
    for name in common.progress(names, args, desc="workloads"):
        w = workload(name, args.smoke)
        ceiling = (gemm, gemm_flops) if name == "mlp_wide" else None
        results[name] = run_workload(w, args, dtype, ceiling)
        around.append(measure_ceiling(1 if args.smoke else 3)[0])
        results[name]["ceiling_around"] = {"before": around[-2], "after": around[-1],
                                           "gflops": (around[-2] + around[-1]) / 2}
    if "gemm_gflops" in results.get("mlp_wide", {}):
        # the ceiling measured interleaved with the mlp_wide steps, later in the run
        ceiling_gflops = results["mlp_wide"]["gemm_gflops"]
    best = max(around + [r["gemm_gflops"] for r in results.values() if "gemm_gflops" in r])
    noisy = noisy_workloads({n: r["ceiling_around"] for n, r in results.items()}, best,
                            args.noisy_below)
    goals = targets(results, ceiling_gflops, mem)
    for g in goals:
        g["noisy"] = g["timing"] and g["workload"] in noisy
    step_rows, epoch_rows = table_rows(results, ceiling_gflops, noisy)
    conv_rows = method_rows(results)
    plot_ratios(results, noisy, folder)
    common.save_results(folder, args, {
        "workloads": results, "gemm_ceiling": {"n": GEMM_N, "gflops": ceiling_gflops,
                                               "samples_alone": ceiling_s,
                                               "around_workloads": around, "best": best},
        "noisy_workloads": sorted(noisy), "memory": mem, "targets": goals,
        "load_average": {"start": load_start, "end": load_average()},
        "malloc": "system" if args.system_malloc else "retain_freed_memory",
        "tables": {"steps": step_rows, "epochs": epoch_rows, "conv_methods": conv_rows,
                   "targets (reported, not asserted)": verdicts(goals, noisy)}})

    print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"{args.dtype}; medians of {args.repeats} interleaved repeats"
          + (" (smoke: no timing claims)" if args.smoke else ""))
    print(f"GEMM ceiling: {GEMM_N}x{GEMM_N} jnp.dot at {ceiling_gflops:.0f} GFLOP/s"
          + (" (interleaved with mlp_wide)" if "mlp_wide" in results else "")
          + "; around the workloads " + ", ".join(f"{g:.0f}" for g in around)
          + f" GFLOP/s (best {best:.0f})")
    if load_start is not None and load_start > (os.cpu_count() or 1):
        print(f"Other work was running: the load average was {load_start:.1f} on "
              f"{os.cpu_count()} CPUs when the benchmark started, so every ceiling and time "
              "below may be low (the noisy mark only sees the ceiling fall within the run).")
    if noisy:
        print(f"The machine was busy: the GEMM ceiling fell below {args.noisy_below:.0%} of "
              f"the run's best ({best:.0f} GFLOP/s) around {', '.join(sorted(noisy))}; their "
              "timing targets are marked noisy, not judged. Rerun on an idle machine.")
    print(common.table(step_rows))
    print("numpy, torch: the faster of the library's own thread count and one thread")
    if args.peers:
        missing = [peer for peer in jax_peers.PEERS if peer not in jax_peers.available()]
        print("flax, equinox: the same network and jax.grad step in each library, timed "
              "with the manual and autodiff steps"
              + (f"; {', '.join(missing)} not importable here, not timed" if missing else ""))
    if epoch_rows:
        print(f"\nEpochs of {2 if args.smoke else args.epoch_steps} steps (time per step)")
        print(common.table(epoch_rows))
    if conv_rows:
        print(f"\nCNN conv_method: time per step, one compiled step and a scanned epoch of "
              f"{args.method_steps} steps")
        print(common.table(conv_rows))
    if mem is not None and "skipped" not in mem:
        mib = 2**20
        print(f"\nMemory ({mem['workload']}, an epoch of 2 steps; MiB): params "
              f"{mem['params_bytes'] / mib:.1f} + optimiser state 0 + one batch's activations "
              f"{mem['activation_bytes'] / mib:.1f} = {mem['needed_bytes'] / mib:.1f} needed; "
              f"data {mem['data_bytes'] / mib:.1f}, largest dL/dW "
              f"{mem['largest_gradient_bytes'] / mib:.1f}")
        print(common.table([{
            "skip_nonfinite": key == "skip", "train peak RSS": m["train_peak_rss"] / mib,
            "RSS/needed": m["ratio_rss"],
            "XLA buffers": "" if m["xla_bytes"] is None else m["xla_bytes"] / mib,
            "XLA/needed": "" if m["ratio_xla"] is None else m["ratio_xla"],
            "compile RSS": m["compile_extra_rss"] / mib}
            for key, m in ((k, mem[k]) for k in ("skip", "no_skip"))]))
    print("\nTargets (reported, not asserted; noisy: the machine was busy around them):")
    print(common.table(verdicts(goals, noisy)))
    print(f"plot: {folder / 'ratios.png'}")
    print(f"results: {folder}")
    return {"folder": str(folder), "results": results, "targets": goals, "memory": mem,
            "ceiling_gflops": ceiling_gflops, "noisy": sorted(noisy)}


if __name__ == "__main__":
    sys.exit(common.run(main))
