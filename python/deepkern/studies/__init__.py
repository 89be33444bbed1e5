"""deepkern.studies: the lecture notes' claims as experiments anyone can rerun.

``deepkern study NAME`` trains on the embedded digits, prints a table (Markdown) and, with
``--plot PNG``, draws the figure. ``--quick`` shrinks the data and the epochs to a smoke test
of a few seconds. Each study is a module with ``run(quick, ...) -> common.Result`` and
``plot(result, path)``:

    optimizers      the same model and seed under all eight optimizers
    batch           full batch vs mini-batch vs batch 1, at equal epochs and at equal updates
    init            zeros, small normal, Xavier, He under ReLU and sigmoid
    activation      sigmoid vs ReLU in a deeper net: the gradient norm per layer
    regularization  none, L2, dropout, DropConnect, batch norm, augmentation, label smoothing,
                    noise, early stopping, stochastic depth: train vs test accuracy
    ensemble        single model vs independent, snapshot, EMA, bagging, boosting, CV top-k
"""

from __future__ import annotations

import importlib
import sys

STUDIES = {
    "optimizers": "the same model and seed under all eight optimizers: loss curves and accuracy",
    "batch": "full batch vs mini-batch vs batch 1 at an equal number of epochs and of updates",
    "init": "zeros, small normal, Xavier, He under ReLU and sigmoid: activation/gradient spread, accuracy",
    "activation": "sigmoid vs ReLU in a deeper net: gradient norm per layer",
    "regularization": "ten regularizers on a small training set: train vs test accuracy",
    "ensemble": "single model vs six kinds of ensemble: test accuracy and cost, over 3 seeds",
}

__all__ = ["STUDIES", "run", "add_parser"]


def run(name, quick=False, **kwargs):
    """Run study ``name`` and return its common.Result."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; expected one of {', '.join(STUDIES)}")
    mod = importlib.import_module(f"deepkern.studies.{name}")
    return mod.run(quick=quick, **{k: v for k, v in kwargs.items() if v is not None})


def cmd_study(args):
    import deepkern

    mod = importlib.import_module(f"deepkern.studies.{args.name}")
    if args.plot:
        from .common import plt
        try:
            plt()                                   # fail before training, not after
        except RuntimeError as e:
            print(f"deepkern study: {e}", file=sys.stderr)
            return 2
    if args.threads:
        deepkern.set_num_threads(args.threads)
    kwargs = {}
    if args.seeds is not None:
        kwargs["seeds"] = args.seeds
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    log = (lambda s: print(s, flush=True)) if args.verbose else None
    try:
        result = mod.run(quick=args.quick, log=log, **kwargs)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            print(f"deepkern study {args.name}: {e}", file=sys.stderr)
            return 2
        raise
    print(f"\n{result.title}\n")
    print(result.table())
    for n in result.notes:
        print(f"\n{n}")
    if args.plot:
        mod.plot(result, args.plot)
        print(f"\nplot written to {args.plot}")
    return 0


def add_parser(sub):
    lines = "\n".join(f"  {k:15s} {v}" for k, v in STUDIES.items())
    import argparse
    p = sub.add_parser("study", help="rerun a claim of the lecture notes on the digits: a table and a plot",
                       description=f"Studies:\n{lines}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=list(STUDIES), help="which study")
    p.add_argument("--quick", action="store_true", help="tiny data and epochs: a smoke test of a few seconds")
    p.add_argument("--plot", metavar="PNG", help="write the study's figure (needs matplotlib)")
    p.add_argument("--seeds", type=int, help="repetitions with different seeds (studies that average)")
    p.add_argument("--epochs", type=int, help="override the study's epochs per model")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: OpenMP's)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each run as it finishes")
    p.set_defaults(func=cmd_study)
    return p
