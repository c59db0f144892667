"""Data parallelism: one device, 8 virtual devices in one process, 2 processes x 2 devices.

The many-device checks run ``tests/_parallel_worker.py`` in fresh processes, because the
number of CPU devices and x64 must be set before JAX starts. The two-process tests talk
over 127.0.0.1 only (coordinator and gloo); they are skipped where this machine's host
name does not resolve to a loopback address, since gloo listens on that address. The
worker runs start together at the beginning of the module; the whole file takes about
30 s on two idle CPU cores (longer on a busy machine). Two of them kill a process
(SIGKILL) in the middle of training, once a worker and once the coordinator, and check
that the other ends with jaxnn's one-line error and exit status 1 in bounded time:

    python -m pytest tests/test_parallel.py -k "dead"
"""

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from jaxnn import parallel, sgd

from .helpers import problem

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_parallel_worker.py"
TIMEOUT = 180  # seconds for one worker run; each takes 10-20 s on two idle cores


# ------------------------------------------------------------------ one device, in-process


def test_one_device_mesh_equals_sgd_train(source="manual"):
    net, params, X, Y = problem("tanh", "softmax", "softmax", 3, m=24)
    kw = dict(key=jax.random.key(3), alpha=0.3, epochs=3, batch_size=8, source=source)
    # parallel first: on GPU/TPU sgd.train donates (deletes) the params it is given
    p2, h2 = sgd.train(net, params, X, Y, mesh=parallel.make_mesh(), **kw)
    p1, h1 = sgd.train(net, params, X, Y, **kw)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-12)
    assert h1["accuracy"] == h2["accuracy"]
    assert p2[0]["W"].sharding.spec == P()


def test_step_equals_sgd_step():
    net, params, X, Y = problem("relu", "sigmoid", "logistic", 3, m=8)
    mesh = parallel.make_mesh()
    step = parallel.make_step(net, "manual", None, mesh)
    alpha = parallel.replicate(np.float64(0.5), mesh)
    rows = np.arange(8)
    p2, _, loss2 = step(parallel.replicate(params, mesh), (), parallel.gather(X, rows, mesh),
                        parallel.gather(Y, rows, mesh), alpha)
    p1, _, loss1 = sgd.make_step(net, "manual")(params, (), X, Y, 0.5)  # may donate params
    np.testing.assert_allclose(loss1, loss2, rtol=1e-14)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


def test_gather_takes_rows_and_splits_the_batch_axis():
    mesh = parallel.make_mesh()
    X = np.arange(30.0).reshape(10, 3)
    idx = np.array([[3, 1, 4, 0], [9, 2, 6, 5]])
    Xb = parallel.gather(X, idx, mesh)
    np.testing.assert_array_equal(Xb, X[idx])
    assert Xb.sharding.spec == P(None, "data")
    assert parallel.gather(X, idx[0], mesh).sharding.spec == P("data")
    np.testing.assert_array_equal(
        parallel.local_positions(Xb.sharding, Xb.shape, 1), np.arange(4))
    with pytest.raises(ValueError, match="1-D or 2-D integers"):
        parallel.gather(X, idx.astype(float), mesh)


def test_replicate_and_local_copy():
    mesh = parallel.make_mesh()
    tree = {"W": jnp.ones((2, 3)), "b": np.zeros(2), "count": np.int32(4)}
    rep = parallel.replicate(tree, mesh)
    assert all(x.sharding.spec == P() for x in jax.tree.leaves(rep))
    back = parallel.local_copy(rep)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == b.dtype


def test_batch_size_must_divide_the_data_axis():
    mesh = AbstractMesh((8,), ("data",))
    parallel.check_batch_size(16, mesh)
    with pytest.raises(ValueError, match="batch_size 12 is not divisible by the 8 devices"):
        parallel.check_batch_size(12, mesh)


def test_mesh_without_data_axis_and_bad_config_are_refused():
    net, params, X, Y = problem("tanh", "identity", "squared_error", 2, m=8)
    mesh = jax.make_mesh((1,), ("batch",))
    with pytest.raises(ValueError, match="'data' axis"):
        sgd.train(net, params, X, Y, key=jax.random.key(0), mesh=mesh, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        sgd.train(net, params, X, Y, key=jax.random.key(0), mesh=parallel.make_mesh(),
                  batch_size=9)


def test_train_parallel_is_kept_and_deprecated():
    net, params, X, Y = problem("tanh", "identity", "squared_error", 2, m=8)
    kw = dict(key=jax.random.key(0), epochs=1, batch_size=4)
    with pytest.warns(DeprecationWarning, match=r"sgd.train\(..., mesh=mesh\)"):
        train_parallel = parallel.train_parallel
    p2, h2 = train_parallel(net, params, X, Y, **kw)
    p1, h1 = sgd.train(net, params, X, Y, **kw)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-12)
    with pytest.raises(AttributeError, match="no attribute 'train_paralel'"):
        parallel.train_paralel  # noqa: B018


def test_exit_on_error_reraises_with_one_process():
    with pytest.raises(RuntimeError, match="boom"), parallel.exit_on_error():
        raise RuntimeError("boom")
    parallel.assert_same_everywhere({"a": np.ones(2)})  # one process: nothing to compare


def test_distributed_train_entry_single_process(tmp_path):
    from experiments import distributed_train

    out = distributed_train.main(["--smoke", "--no-progress", "--runs-dir", str(tmp_path),
                                  "--out", "run", "--hidden-sizes", "16"])
    folder = Path(out["folder"])
    summary = json.loads((folder / "results.json").read_text())["summary"]
    assert summary["processes"] == 1 and len(summary["loss"]) == 2
    assert summary["test_accuracy"] > 2 * summary["majority_baseline"]
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["checkpoint_000000000044.npz"]


# --------------------------------------------------------------------- subprocess helpers


def environment(devices: int) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hostname_is_loopback() -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(socket.gethostname())).is_loopback
    except OSError:
        return False


LOOPBACK_REASON = ("gloo listens on the address of the host name, which is not a loopback "
                   "address here; the two-process tests must not open ports on other "
                   "interfaces")
needs_loopback = pytest.mark.skipif(not hostname_is_loopback(), reason=LOOPBACK_REASON)


class Processes:
    """Worker processes, logs in files; a thread per process records when it exits.

    Started at once; ``stop`` kills whatever still runs.
    """

    def __init__(self, folder: Path, n: int, devices: int, extra=()):
        folder.mkdir(parents=True, exist_ok=True)
        self.logs = [folder / f"worker{i}.log" for i in range(n)]
        self.out = folder / "result.json"
        cluster = ([] if n == 1 else
                   ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(n)])
        self.procs, self.exit_times, self.threads = [], [None] * n, []
        for i, log in enumerate(self.logs):
            with open(log, "w") as f:
                args = [sys.executable, str(WORKER), str(self.out), *cluster, *extra]
                if n > 1:
                    args += ["--process-id", str(i)]
                self.procs.append(subprocess.Popen(args, env=environment(devices), stdout=f,
                                                   stderr=subprocess.STDOUT, cwd=ROOT))
        for i, p in enumerate(self.procs):
            thread = threading.Thread(target=self._watch, args=(i, p), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _watch(self, i: int, p: subprocess.Popen) -> None:
        p.wait()
        self.exit_times[i] = time.monotonic()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()

    def log(self, i: int) -> str:
        text = self.logs[i].read_text(errors="replace")
        return "\n".join(line for line in text.splitlines() if not line.startswith("    @"))

    def logs_text(self) -> str:
        return "\n".join(f"--- process {i} ---\n{self.log(i)[-4000:]}"
                         for i in range(len(self.procs)))

    def wait_all(self, timeout: float = TIMEOUT) -> dict:
        """Exit codes, exit times (monotonic seconds), logs and process 0's JSON.

        Kills the workers and fails the test if they run longer than ``timeout``.
        """
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            self.stop()
            pytest.fail(f"workers still running after {timeout} s\n{self.logs_text()}")
        return {"codes": [p.returncode for p in self.procs], "times": list(self.exit_times),
                "logs": [self.log(i) for i in range(len(self.procs))],
                "raw_logs": [log.read_text(errors="replace") for log in self.logs],
                "all_logs": self.logs_text(),
                "result": json.loads(self.out.read_text()) if self.out.exists() else None}


HEARTBEAT = 5  # seconds; the workers' heartbeat_timeout_seconds
TWO_PROCESS_CASES = "dense-manual,dense-manual-momentum"


def eight_device_run(folder: Path) -> Processes:
    return Processes(folder, 1, devices=8)


def two_process_run(folder: Path, victim: int, cases: str = TWO_PROCESS_CASES) -> Processes:
    """Two workers x 2 devices: the equality ``cases``, then ``victim`` kills itself."""
    return Processes(folder, 2, devices=2, extra=["--cases", cases, "--die", str(victim),
                                                  "--heartbeat-timeout", str(HEARTBEAT)])


@pytest.fixture(scope="module", autouse=True)
def subprocess_runs(request, tmp_path_factory):
    """Start the worker runs the selected tests need, together, before the other tests.

    They run side by side (and beside the in-process tests), so the file takes about
    as long as the longest run instead of the sum of all.
    """
    wanted = {name for item in request.session.items for name in item.fixturenames}
    runs = {}
    if "eight_devices" in wanted:
        runs["eight"] = eight_device_run(tmp_path_factory.mktemp("eight"))
    if "two_processes_victim_1" in wanted and hostname_is_loopback():
        runs["two"] = two_process_run(tmp_path_factory.mktemp("two"), victim=1)
    if "dead_coordinator" in wanted and hostname_is_loopback():
        runs["coordinator"] = two_process_run(tmp_path_factory.mktemp("coordinator"), victim=0,
                                              cases="")
    yield runs
    for run in runs.values():
        run.stop()


def check_equal(result: dict, devices: int, processes: int, cases: set[str]) -> None:
    assert (result["devices"], result["processes"]) == (devices, processes)
    assert set(result["cases"]) >= cases
    for name, case in result["cases"].items():
        assert case["max_relative_difference"] < 1e-12, name
        np.testing.assert_allclose(case["loss_parallel"], case["loss_single"], rtol=1e-12)
        np.testing.assert_allclose(case["accuracy_parallel"], case["accuracy_single"])
        assert case["compiles_after_first_epoch"] == 0, name
        if "model" not in case["mesh"]:
            assert set(case["param_specs"]) == {"P()"}, name
            # the gradient's sum over the split batch; no data or parameters gathered
            assert case["collectives"] == ["all-reduce"], name
    assert re.search(rf"not divisible by the {devices} devices", result["non_divisible_error"])


# ------------------------------------------------------------------- 8 devices, 1 process


@pytest.fixture(scope="module")
def eight_devices(subprocess_runs):
    run = subprocess_runs["eight"].wait_all()
    assert run["codes"] == [0] and run["result"] is not None, run["all_logs"]
    return run["result"]


def test_eight_devices_equal_one_device(eight_devices):
    check_equal(eight_devices, devices=8, processes=1,
                cases={"dense-manual", "dense-autodiff", "dense-manual-momentum",
                       "dense-in-place", "cnn-manual", "cnn-autodiff"})


def test_in_place_descent_on_a_mesh_equals_one_device(eight_devices):
    # W^[2] (1024, 1025), over 8 MiB, updated in place in blocks: the batch split over
    # "data" costs one all-reduce and nothing gathered; W^[2]'s rows split over "model"
    for name, specs in (("dense-in-place", ["P()"] * 6),
                        ("dense-in-place-model-axis",
                         ["P()", "P()", "P('model', None)", "P()", "P()", "P()"])):
        case = eight_devices["cases"][name]
        assert case["param_specs"] == specs, name
        assert case["max_relative_difference"] < 1e-12, name
    assert eight_devices["cases"]["dense-in-place"]["collectives"] == ["all-reduce"]
    # each device updates its own rows: nothing of W^[2]'s size is gathered
    assert eight_devices["cases"]["dense-in-place-model-axis"]["largest_all_gather"] < 1024 * 64


def test_model_axis_splits_weight_rows_and_still_equals_one_device(eight_devices):
    case = eight_devices["cases"]["dense-model-axis"]
    assert case["mesh"] == {"data": 4, "model": 2}
    # W^[1] (32, 6), W^[2] (32, 32) split by rows; biases and W^[3] (3, 32) replicated
    assert case["param_specs"] == ["P('model', None)", "P()"] * 2 + ["P()"] * 2
    assert "all-reduce" in case["collectives"]


# ------------------------------------------------------------ 2 processes x 2 devices


@pytest.fixture(scope="module")
def two_processes_victim_1(subprocess_runs):
    if "two" not in subprocess_runs:
        pytest.skip(LOOPBACK_REASON)
    return subprocess_runs["two"].wait_all()


@pytest.fixture(scope="module")
def dead_coordinator(subprocess_runs):
    if "coordinator" not in subprocess_runs:
        pytest.skip(LOOPBACK_REASON)
    return subprocess_runs["coordinator"].wait_all()


def test_two_processes_equal_one_device(two_processes_victim_1):
    run = two_processes_victim_1
    assert run["result"] is not None, run["all_logs"]
    check_equal(run["result"], devices=4, processes=2, cases=set(TWO_PROCESS_CASES.split(",")))


def check_survivor_stopped(run: dict, victim: int, within: float) -> None:
    """The victim died by SIGKILL; the survivor ended with jaxnn's one line, exit status 1,
    no C++ stack trace, ``within`` seconds of the victim."""
    survivor, logs = 1 - victim, run["all_logs"]
    assert run["codes"][victim] == -9, logs  # SIGKILL, by its own hand after epoch 1
    assert run["codes"][survivor] == 1, logs
    assert "epoch 1 done" in run["logs"][survivor], logs
    raw = run["raw_logs"][survivor]
    last = raw.strip().splitlines()[-1]
    assert re.fullmatch(rf"process {survivor} of 2 stopped: .*another process has probably "
                        r"died.*", last), logs
    assert "Check failure stack trace" not in raw and not re.search(r"^\s+@\s+0x", raw, re.M), raw
    assert run["times"][survivor] - run["times"][victim] < within, (run["times"], logs)


def test_a_dead_process_stops_the_other(two_processes_victim_1):
    # the coordinator notices the missing heartbeats after HEARTBEAT seconds (plus slack
    # for a busy machine)
    check_survivor_stopped(two_processes_victim_1, victim=1, within=HEARTBEAT + 15)


def test_a_dead_coordinator_stops_the_other(dead_coordinator):
    # the survivor's connection to the coordination service breaks at once
    check_survivor_stopped(dead_coordinator, victim=0, within=15)


SUPERVISED = """
import os, signal, sys
from jaxnn import parallel
parallel._supervise(1, 2)
print("child says hello", file=sys.stderr, flush=True)
print("*** Check failure stack trace: ***", file=sys.stderr)
print("    @     0x7f0000000000  (unknown)", file=sys.stderr, flush=True)
how = sys.argv[1]
if how == "abort":
    os.abort()
if how == "term":
    os.kill(os.getpid(), signal.SIGTERM)
sys.exit(int(how))
"""


@pytest.mark.parametrize("how, code", [("abort", 1), ("term", -15), ("3", 3)])
def test_supervisor_turns_an_abort_into_one_line_and_passes_the_rest_on(how, code):
    run = subprocess.run([sys.executable, "-c", SUPERVISED, how], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=environment(1))
    assert run.returncode == code, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[0] == "child says hello" and "@" not in run.stderr, run.stderr
    assert "Check failure" not in run.stderr
    if how == "abort":
        assert lines[-1].startswith("process 1 of 2 stopped: the JAX distributed runtime "
                                    "aborted it"), run.stderr
        assert len(lines) == 2
    else:
        assert len(lines) == 1
