"""The tour: the gradient check of the notes' 4-3-1 network, then the training experiments.

Runs notes_network (manual vs autodiff vs finite differences), single_neuron (the house
price neuron), mlp_digits (an MLP trained with both gradients) and cnn_images (a CNN on
8x8 digits and on colour patches) in a quick setting (one seed, 20 epochs), with bundled
data only.

Expected: about a minute on two CPU cores; manual vs autodiff gradients agree to
rounding everywhere; the neuron finds about $200 per square foot above about 800 square
feet; the MLP and the CNN classify held-out digits with about 97.5-99% accuracy; the CNN
tells the two photographs' patches apart well above the 50% majority baseline. It ends
with a table of these numbers and the folders the files went to, and builds the report
page over all runs (``experiments.report``) where that module is present. With --out
NAME every experiment's run folder is named NAME too.
"""

import sys

from experiments import common

QUICK = {
    "notes_network": [],
    "single_neuron": [],
    "mlp_digits": ["--epochs", "20", "--seeds", "1"],
    "cnn_images": ["--epochs", "20", "--seeds", "1"],
}


def key_numbers(name: str, summary: dict) -> list[dict]:
    """The rows of the final table for one experiment's summary."""
    if name == "notes_network":
        return [{"experiment": name, "quantity": f"max manual/autodiff rel. error ({d})",
                 "value": s["max_manual_vs_autodiff"]} for d, s in summary.items()] + [
                {"experiment": name, "quantity": f"max fd/autodiff rel. error ({d})",
                 "value": s["max_fd_vs_autodiff"]} for d, s in summary.items()]
    if name == "single_neuron":
        rows = [("a ($ per sqft; true 200)", 1000 * summary["a"]),
                ("b (thousand $; true -160)", summary["b"]),
                ("final loss (scaled data)", summary["final_loss"]),
                ("max manual/autodiff rel. error", summary["max_manual_vs_autodiff"])]
    elif name == "mlp_digits":
        rows = [(f"test accuracy ({source} gradient)", percent(summary[f"test_accuracy_{source}"]))
                for source in ("manual", "autodiff") if f"test_accuracy_{source}" in summary]
        rows.append(("majority baseline", percent(summary["baseline"])))
        if "max_abs_difference" in summary:
            rows.append(("max |θ_manual − θ_autodiff| over training",
                         summary["max_abs_difference"]))
    else:
        rows = [(f"{task} test accuracy", percent(summary[f"{task}_test_accuracy"]))
                for task in ("digits", "patches") if f"{task}_test_accuracy" in summary]
        if "patches_baseline" in summary:
            rows.append(("patches majority baseline", percent(summary["patches_baseline"])))
        rows.append(("max manual/autodiff gradient difference (leaf-relative)",
                     summary["max_manual_vs_autodiff"]))
    return [{"experiment": name, "quantity": q, "value": v} for q, v in rows]


def percent(value):
    return common.percent(value) if isinstance(value, float) else value


def main(argv=None) -> dict:
    p = common.parser("tour", __doc__, (
        "the four experiments' own run folders under runs/<experiment>/ (named by --out, "
        "else by their timestamps)",))
    args = p.parse_args(argv)
    common.setup(args)
    import importlib
    import importlib.util

    shared = ["--seed", str(args.seed), "--runs-dir", args.runs_dir, "--dtype", args.dtype]
    shared += ["--device", args.device] if args.device else []
    shared += ["--out", args.out] if args.out else []
    shared += [flag for flag, on in (("--overwrite", args.overwrite), ("--smoke", args.smoke),
                                     ("--no-progress", args.no_progress)) if on]
    run = common.Run(args, "tour", argv)
    folder = run.folder
    results, seconds = {}, {}
    with common.Timer() as total:
        for name, options in QUICK.items():
            print(f"\n=== {name} ===", flush=True)
            run.stage = f"the {name} experiment"
            module = importlib.import_module(f"experiments.{name}")
            with common.Timer() as t:
                results[name] = module.main(shared + options)
            seconds[name] = t.seconds

    rows = [row for name, r in results.items() for row in key_numbers(name, r["summary"])]
    run.finish({
        "summary": {"rows": rows, "seconds": seconds, "total_seconds": total.seconds,
                    "folders": {name: r["folder"] for name, r in results.items()}}})
    print("\n=== tour: results ===")
    print(common.table(rows, formats={"value": common.number}))
    print(f"\nTour finished in {common.duration(total.seconds)}. Files:")
    for name, r in results.items():
        print(f"  {name:<16} {r['folder']}  ({common.duration(seconds[name])})")
    print(f"  {'tour':<16} {folder}")
    if importlib.util.find_spec("experiments.report") is not None:
        # one page over every run under --runs-dir, these included
        print("\n=== report ===", flush=True)
        importlib.import_module("experiments.report").main(["--runs-dir", args.runs_dir])
    return {"folder": str(folder), "summary": {"rows": rows, "seconds": seconds,
                                               "total_seconds": total.seconds},
            "results": results}


if __name__ == "__main__":
    sys.exit(common.run(main))
