"""The benchmark's workloads written in Flax (linen) and in Equinox, for ``--peers``.

Each builds the workload's network in the library's own idiom from the same parameters
the jaxnn model starts from (Flax: NHWC images and Dense kernels (n_in, n_out) = Wᵀ;
Equinox: one example at a time, ``jax.vmap`` over the batch, NCHW images and OIHW
kernels), so that its starting loss equals jaxnn's, and compiles one training step:
``jax.value_and_grad`` of the mean softmax cross-entropy (optax's), then p − α ∂L/∂p,
under one ``jit``, donating the old parameters where jaxnn's step does (off the CPU).
Their gradients are autodiff's, so their natural comparison is jaxnn's autodiff step;
the benchmark sets them against the manual one as well.

Neither library is a dependency: ``available()`` lists those that import.
"""

import functools
import importlib.util

PEERS = ("flax", "equinox")


def available() -> list[str]:
    """The peers of ``PEERS`` that can be imported here."""
    return [name for name in PEERS if importlib.util.find_spec(name) is not None]


def _dense_sizes(w) -> tuple[int, ...]:
    """The output sizes of the dense layers, in order."""
    return w.sizes if w.is_cnn else w.sizes[1:]


def _donate() -> tuple[int, ...]:
    import jax

    return () if jax.default_backend() == "cpu" else (0,)


def _step(loss_fn, alpha):
    """One jitted SGD step of ``loss_fn(tree, X, Y)``: (new tree, loss)."""
    import jax

    @functools.partial(jax.jit, donate_argnums=_donate())
    def step(tree, X, Y):
        loss, grads = jax.value_and_grad(loss_fn)(tree, X, Y)
        return jax.tree.map(lambda p, g: p - alpha * g, tree, grads), loss

    return step


def _contender(compiled, tree, X, Y):
    """A zero-argument call of the compiled step that keeps its own evolving tree."""
    state = {"tree": tree}

    def call():
        state["tree"], loss = compiled(state["tree"], X, Y)
        return state["tree"], loss

    return call


def flax_step(w, params, X, Y, alpha: float):
    """(Flax linen step on the workload, its starting loss, its compile seconds)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from experiments import common

    sizes = _dense_sizes(w)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            for spec in w.layers:
                if spec[0] == "conv":
                    x = nn.relu(nn.Conv(spec[1], (spec[2], spec[2]), padding="VALID")(x))
                else:
                    x = nn.max_pool(x, (spec[1], spec[1]), strides=(spec[1], spec[1]))
            x = x.reshape(x.shape[0], -1)
            for l, n in enumerate(sizes):
                x = nn.Dense(n)(x)
                if l < len(sizes) - 1:
                    x = nn.relu(x)
            return x

    net = Net()
    tree = {f"Conv_{i}": {"kernel": p["W"], "bias": p["b"]}
            for i, p in enumerate(params["conv"] if w.is_cnn else [])}
    tree |= {f"Dense_{i}": {"kernel": jnp.transpose(p["W"]), "bias": p["b"]}
             for i, p in enumerate(params["dense"] if w.is_cnn else params)}
    variables = jax.tree.map(jnp.array, {"params": tree})
    expected = jax.eval_shape(net.init, jax.random.key(0), X)
    if jax.tree.map(lambda a: a.shape, expected) != jax.tree.map(lambda a: a.shape, variables):
        raise AssertionError("the Flax network's parameters do not match the workload's")

    def loss_fn(v, X, Y):
        return optax.softmax_cross_entropy_with_integer_labels(net.apply(v, X), Y).mean()

    compiled, seconds = common.timed_compile(_step(loss_fn, alpha), variables, X, Y)
    start = float(jax.jit(loss_fn)(variables, X, Y))
    return _contender(compiled, variables, X, Y), start, seconds


def equinox_step(w, params, X, Y, alpha: float):
    """(Equinox step on the workload, its starting loss, its compile seconds)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    from experiments import common

    keys = iter(jax.random.split(jax.random.key(0), len(w.layers) + len(_dense_sizes(w))))
    features, channels = [], w.input_shape[2] if w.is_cnn else None
    convs = iter(params["conv"] if w.is_cnn else [])
    for spec in w.layers:
        if spec[0] == "conv":
            p = next(convs)
            conv = eqx.nn.Conv2d(channels, spec[1], spec[2], key=next(keys))
            conv = eqx.tree_at(lambda c: (c.weight, c.bias), conv,
                               (jnp.transpose(p["W"], (3, 2, 0, 1)), p["b"][:, None, None]))
            features.append(conv)
            channels = spec[1]
        else:
            features.append(eqx.nn.MaxPool2d(spec[1], spec[1]))
    dense = []
    for p in params["dense"] if w.is_cnn else params:
        n_out, n_in = p["W"].shape
        linear = eqx.nn.Linear(n_in, n_out, key=next(keys))
        dense.append(eqx.tree_at(lambda m: (m.weight, m.bias), linear, (p["W"], p["b"])))

    class Net(eqx.Module):
        features: list
        dense: list

        def __call__(self, x):
            for layer in self.features:
                x = layer(x)
                if isinstance(layer, eqx.nn.Conv2d):
                    x = jax.nn.relu(x)
            if self.features:
                x = jnp.transpose(x, (1, 2, 0))  # flattened in (H, W, C) order, as jaxnn
            x = x.reshape(-1)
            for l, layer in enumerate(self.dense):
                x = layer(x)
                if l < len(self.dense) - 1:
                    x = jax.nn.relu(x)
            return x

    X_in = jnp.transpose(X, (0, 3, 1, 2)) if w.is_cnn else X  # Equinox convolves CHW
    params_of, static = eqx.partition(Net(features, dense), eqx.is_array)
    params_of = jax.tree.map(jnp.array, params_of)  # its own copy: the step may donate it

    def loss_fn(p, X, Y):
        logits = jax.vmap(eqx.combine(p, static))(X)
        return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()

    compiled, seconds = common.timed_compile(_step(loss_fn, alpha), params_of, X_in, Y)
    start = float(jax.jit(loss_fn)(params_of, X_in, Y))
    return _contender(compiled, params_of, X_in, Y), start, seconds


STEPS = {"flax": flax_step, "equinox": equinox_step}
