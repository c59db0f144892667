"""One short check of an accelerator: backend, gradients in float32 and float64, training, speed.

Question: does everything that runs on the CPU give the same answers on this device?
Prints the backend and devices, runs the manual-vs-autodiff-vs-finite-difference
check for a dense network and a CNN in float32 and float64, trains mlp_digits and
cnn_images briefly, and runs the benchmark in quick mode; everything goes into one
results.json. Expected: float64 agreement to ~1e-12 as on the CPU; float32 agreement
to ~1e-5 when matmuls run at "highest" precision (TF32 on GPUs otherwise).
Under 5 minutes.
"""

import sys
import time
import traceback

from experiments import common


def gradient_checks() -> list[dict]:
    import jax
    import jax.numpy as jnp

    from jaxnn import DenseNetwork, gradcheck
    from jaxnn.cnn import CNN, Conv, MaxPool

    rows = []
    dense_net = DenseNetwork((16, 32, 32, 10), "relu", "softmax", "softmax")
    cnn_net = CNN((12, 12, 3), (Conv(8, 3), MaxPool(2), Conv(8, 3, padding="SAME")), (10,))
    for name, net in (("dense", dense_net), ("cnn", cnn_net)):
        for dtype in (jnp.float32, jnp.float64):
            k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
            params = net.init(k1, "he", dtype)
            shape = (16,) if name == "dense" else net.input_shape
            X = jax.random.normal(k2, (32,) + shape, dtype)
            Y = jax.random.randint(k3, (32,), 0, 10)
            for precision in ("default", "highest"):
                with jax.default_matmul_precision(precision):
                    r = gradcheck.check(net, params, X, Y, max_coords=200)
                rows.append({"model": name, "dtype": jnp.dtype(dtype).name,
                             "precision": precision, "manual/autodiff": r.max(),
                             "fd/autodiff": r.max("fd_vs_autodiff"),
                             "kinks": sum(r.kinks.values())})
    return rows


def main(argv=None) -> dict:
    p = common.parser("device_check", __doc__, (
        "mlp_digits/, cnn_images/, benchmark/ (those experiments' own run folders, inside "
        "this run's folder)",))
    p.set_defaults(dtype="float64")
    args = p.parse_args(argv)
    common.setup(args)
    import jax

    run = common.Run(args, "device_check", argv)
    folder = run.folder
    env = common.environment()
    print(f"backend: {env['backend']}  devices: {env['devices']}  kind: {env['device_kind']}")
    results: dict = {"steps": {}}
    sub = ["--runs-dir", str(folder), "--no-progress"] + (["--smoke"] if args.smoke else [])
    if args.device:
        sub += ["--device", args.device]

    def step(name, fn):
        run.stage = f"step {name}"
        start = time.perf_counter()
        try:
            out = fn()
            results["steps"][name] = {"ok": True, "seconds": time.perf_counter() - start,
                                      "result": out}
        except Exception as e:  # report and go on: one failing step must not hide others
            results["steps"][name] = {"ok": False, "seconds": time.perf_counter() - start,
                                      "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc()}
            common.close_runs(opened)
            print(f"{name}: FAILED {type(e).__name__}: {e}", file=sys.stderr)

    opened = common.open_runs()
    step("gradient_check", gradient_checks)
    if results["steps"]["gradient_check"]["ok"]:
        print(common.table(results["steps"]["gradient_check"]["result"]))

    def experiment(module, extra):
        def run():
            mod = __import__(f"experiments.{module}", fromlist=["main"])
            return mod.main(sub + extra).get("summary")
        return run

    step("mlp_digits", experiment("mlp_digits", ["--epochs", "5"]))
    step("cnn_images", experiment("cnn_images", ["--epochs", "2"]))
    step("benchmark", experiment("benchmark", ["--quick"]))
    del jax
    run.finish(results)
    print(common.table([{"step": k, "ok": v["ok"], "seconds": v["seconds"]}
                        for k, v in results["steps"].items()]))
    print(f"results: {folder}")
    return {"folder": str(folder), "summary": results,
            "failed": [k for k, v in results["steps"].items() if not v["ok"]]}


if __name__ == "__main__":
    sys.exit(common.run(main, status=lambda result: 1 if result["failed"] else 0))
