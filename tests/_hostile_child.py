"""Subprocess for tests/test_hostile_files.py: run loaders on hostile files, one fork each.

    python tests/_hostile_child.py CASES.json OUT.json

CASES.json is a list of ``[name, call, path]`` with ``call`` one of those in ``call``.
The process limits its address space to 3 GiB, imports jaxnn, then forks once per case;
the fork (after starting JAX's CPU backend, for the checkpoint calls) resets its peak
RSS (``/proc/self/clear_refs``), runs the call under a 20 s alarm and reports what it
raised and how far its peak RSS (``VmHWM``) rose above its RSS before the call. A fork
that dies by a signal (SIGSEGV, the alarm) is reported as such. OUT.json maps each name
to ``{"error", "is_value_error", "message", "rss_growth_mib", "signal", "returned"}``.
"""

import json
import os
import resource
import signal
import sys

LIMIT = 3 * 2**30


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def template():
    import jax
    import jax.numpy as jnp

    from jaxnn import checkpoint

    f32 = jnp.float32
    params = [{"W": jax.ShapeDtypeStruct((5, 3), f32), "b": jax.ShapeDtypeStruct((5,), f32)},
              {"W": jax.ShapeDtypeStruct((2, 5), f32), "b": jax.ShapeDtypeStruct((2,), f32)}]
    return checkpoint.TrainState(params, ())


def call(kind: str, path: str):
    from jaxnn import checkpoint, data, safe_pickle

    calls = {
        "load_idx": lambda: data.load_idx(path),
        "load_mnist": lambda: data.load_mnist(path),
        "load_cifar10_batch": lambda: data.load_cifar10_batch(path),
        "load_cifar10_binary_batch": lambda: data.load_cifar10_binary_batch(path),
        "load_cifar10": lambda: data.load_cifar10(path),
        "safe_load": lambda: safe_pickle.safe_load(path),
        "restore": lambda: checkpoint.restore(path, template()),
        "restore_latest": lambda: checkpoint.restore_latest(path, template()),
    }
    result = calls[kind]()
    if kind == "restore_latest" and result is not None:
        return {"path": str(result.path), "skipped": [[str(s.path), s.reason]
                                                       for s in result.skipped]}
    return None


def one(kind: str, path: str, out_fd: int) -> None:
    if kind.startswith("restore"):  # start JAX's CPU backend first: its memory is not the file's
        import jax.numpy as jnp

        jnp.zeros(1).block_until_ready()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = status_kib("VmRSS")
    signal.alarm(20)
    report = {"error": None, "is_value_error": False, "message": "", "signal": None}
    try:
        report["returned"] = call(kind, path)
    except BaseException as error:  # noqa: BLE001 - what escapes is the finding
        report.update(error=type(error).__name__, is_value_error=isinstance(error, ValueError),
                      message=str(error)[:2000])
    signal.alarm(0)
    report["rss_growth_mib"] = (status_kib("VmHWM") - before) / 1024
    os.write(out_fd, json.dumps(report).encode())
    os._exit(0)


def main() -> None:
    cases_path, out_path = sys.argv[1:]
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))
    import jaxnn.checkpoint  # noqa: F401 - imported once, before the forks
    import jaxnn.data  # noqa: F401

    results = {}
    for name, kind, path in json.load(open(cases_path)):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            one(kind, path, write)
        os.close(write)
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        os.close(read)
        _, status = os.waitpid(pid, 0)
        if chunks:
            results[name] = json.loads(b"".join(chunks))
        else:
            results[name] = {"error": None, "signal": os.WTERMSIG(status)
                             if os.WIFSIGNALED(status) else None,
                             "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
