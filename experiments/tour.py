"""The tour: the gradient check of the notes' 4-3-1 network, then the training experiments.

Runs in a few minutes on two CPU cores with bundled data only, and ends with a table
of results and the folders the files went to.
"""

import sys

from experiments import common


def main(argv=None) -> dict:
    p = common.parser("tour", __doc__)
    args = p.parse_args(argv)
    common.setup(args)
    from experiments import notes_network

    shared = ["--seed", str(args.seed), "--runs-dir", args.runs_dir, "--no-progress"]
    if args.smoke:
        shared.append("--smoke")
    results = {"notes_network": notes_network.main(shared + ["--dtype", "float32"])}
    print("\nTour finished. Files:")
    for name, r in results.items():
        print(f"  {name:<16} {r['folder']}")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
