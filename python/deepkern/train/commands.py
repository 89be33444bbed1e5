"""The commands ``deepkern train``, ``deepkern compare`` and ``deepkern finetune``.

Registered in deepkern/cli.py's EXTERNAL_COMMANDS; this module imports only argparse at the
top so that building the parser stays instant (the rest is imported when a command runs).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# ---------------------------------------------------------------------------- shared options


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _batch_size(s):
    return "full" if s == "full" else _positive_int(s)


def _fraction(s):
    v = float(s)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {s!r}")
    return v


def _nonneg(s):
    v = float(s)
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {s!r}")
    return v


def _channels(s):
    try:
        c = tuple(int(v) for v in s.replace("x", ",").split(","))
    except ValueError:
        c = ()
    if len(c) != 2 or min(c) < 1:
        raise argparse.ArgumentTypeError(f"expected two channel counts like 16,32, got {s!r}")
    return c


def _add_common(p, epochs):
    """Options of every training command: data, model, run."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", metavar="PATH",
                   help="'digits' (the embedded 8x8 digits, default), a .npz file with arrays x (N, [C,] H, W) "
                        "and y (N,), or a directory of MNIST-format IDX files (train-* and t10k-*)")
    g.add_argument("--val-size", type=_fraction, default=0.1, metavar="F",
                   help="fraction of the training data held out for validation (default 0.1)")
    g = p.add_argument_group("model")
    g.add_argument("--channels", type=_channels, default=None, metavar="C1,C2",
                   help="output channels of the two convolutions (default 16,32)")
    g.add_argument("--dropout", type=_fraction, default=0.25, metavar="P", help="dropout before the classifier (0.25)")
    g.add_argument("--init", choices=("he", "xavier", "default"), default="he",
                   help="weight initialization: he (Kaiming normal, default), xavier (Glorot normal), "
                        "default (PyTorch's U(+-1/sqrt(fan_in)))")
    g = p.add_argument_group("run")
    g.add_argument("--epochs", type=_positive_int, default=epochs, help=f"epochs (default {epochs})")
    g.add_argument("--batch-size", type=_batch_size, default=64, metavar="N",
                   help="samples per step: 1 = SGD, 'full' = batch gradient descent (default 64)")
    g.add_argument("--label-smoothing", type=_fraction, default=0.1, metavar="EPS",
                   help="label smoothing of the cross-entropy (default 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seeds the initialization, batch order, dropout and "
                   "augmentation (default 0; the test split is fixed whatever the seed)")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads (default: 1 for images of up to 16x16 pixels like the digits, whose kernels are "
                        "too small to split; else deepkern's, OMP_NUM_THREADS)")
    g.add_argument("--backend", choices=("cpu", "numpy", "cuda"), default="cpu",
                   help="cpu (C++ kernels, default), numpy (the plain-NumPy reference: slow), cuda (the GPU: "
                        "needs a CUDA build of deepkern and CuPy)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no per-epoch lines")


def _add_training_options(p):
    g = p.add_argument_group("optimization")
    g.add_argument("--optimizer", default="adam",
                   choices=("sgd", "momentum", "nag", "adagrad", "adadelta", "rmsprop", "adam", "adamw"),
                   help="default adam")
    g.add_argument("--lr", type=_nonneg, default=None,
                   help="learning rate (default: 0.002 for adam, else per optimizer: see `deepkern compare --help`)")
    g.add_argument("--momentum", type=_nonneg, default=None, help="momentum (sgd, momentum, nag, rmsprop)")
    g.add_argument("--weight-decay", type=_nonneg, default=None, metavar="L2",
                   help="L2 penalty (AdamW: decoupled weight decay, default 0.01; others 0)")
    g.add_argument("--schedule", choices=("none", "step", "cosine", "restarts", "plateau"), default="none",
                   help="learning-rate schedule: step (x0.1 every epochs/3), cosine (to 0 over the run), restarts "
                        "(cosine with warm restarts every --cycle epochs), plateau (halve when the validation "
                        "loss stalls 2 epochs); default none")
    g.add_argument("--cycle", type=_positive_int, default=None, metavar="EPOCHS",
                   help="cycle length of --schedule restarts (default epochs/3)")
    g.add_argument("--snapshots", action="store_true",
                   help="snapshot ensemble: keep the weights at the end of each cosine cycle and average the "
                        "snapshots' predictions (implies --schedule restarts)")
    g.add_argument("--ema-decay", type=_fraction, default=0.0, metavar="D",
                   help="evaluate with an exponential moving average of the weights (e.g. 0.99); 0 = off")
    g.add_argument("--patience", type=_positive_int, default=None, metavar="EPOCHS",
                   help="early stopping: stop after this many epochs without a better validation loss and "
                        "restore the best epoch's weights (default off)")
    g.add_argument("--clip-norm", type=_nonneg, default=None, metavar="MAX",
                   help="clip the global gradient norm to MAX (default off)")
    g = p.add_argument_group("augmentation (training batches only)")
    g.add_argument("--augment", action="store_true", help="random shifts (crop with padding) and Gaussian noise")
    g.add_argument("--crop-padding", type=int, default=1, metavar="PX", help="shift up to PX pixels (default 1)")
    g.add_argument("--scale", type=_fraction, default=0.0, metavar="S",
                   help="random zoom in [1-S, 1+S] (default 0: off)")
    g.add_argument("--rotate", type=_nonneg, default=0.0, metavar="DEG", help="random rotation (default 0: off)")
    g.add_argument("--jitter", type=_fraction, default=0.0, metavar="J",
                   help="brightness and contrast jitter (default 0: off)")
    g.add_argument("--noise", type=_nonneg, default=0.1, metavar="STD",
                   help="Gaussian noise on the standardized pixels (default 0.1)")


# ---------------------------------------------------------------------------- data

class Prepared:
    """The splits of a data set, standardized with the training split's statistics."""

    def __init__(self, name, train, val, test, std):
        self.name, self.train, self.val, self.test, self.std = name, train, val, test, std

    @property
    def num_classes(self):
        import numpy as np
        return int(max(np.max(self.train[1]), np.max(self.test[1]),
                       np.max(self.val[1]) if len(self.val[1]) else 0)) + 1

    def describe(self):
        x = self.train[0]
        shape = "x".join(str(s) for s in x.shape[2:])
        if x.shape[1] != 1:
            shape = f"{x.shape[1]}x{shape}"
        return (f"{self.name} {shape} ({len(self.train[1]):,} train / {len(self.val[1]):,} val / "
                f"{len(self.test[1]):,} test, {self.num_classes} classes)")


def load_data(path, val_size, seed, std_state=None):
    """Prepared splits of 'digits', a .npz file or an MNIST directory.

    The test split is fixed: the digits' seeded 20%, MNIST's t10k files, or a .npz file's 20%
    drawn with the digits' test seed; validation is ``val_size`` of the rest, drawn with
    ``seed``. std_state: a Standardizer state to use instead of fitting one (a resumed run).
    """
    import numpy as np

    from .. import data

    if path == "digits":
        tr, va, te = data.digits_splits(val_size=val_size, seed=seed)
        name = "digits"
    else:
        if os.path.isdir(path):
            x, y = data.load_mnist(path, train=True)
            x_te, y_te = data.load_mnist(path, train=False)
        else:
            x, y = data.load(path)
            rest, test = data.split_indices(y, [data.DIGITS_TEST_SIZE], seed=data.DIGITS_TEST_SEED)
            x, y, x_te, y_te = x[rest], y[rest], x[test], y[test]
        if x.ndim != 4:
            raise ValueError(f"{path}: the CNN needs images (N, H, W) or (N, C, H, W), got x of shape {x.shape}")
        train_idx, val_idx = data.split_indices(y, [val_size], seed=seed)
        tr, va, te = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), (x_te, y_te)
        name = os.path.basename(os.path.normpath(path))
    if len(tr[1]) == 0:
        raise ValueError(f"{path}: no training samples left after the splits")
    std = data.Standardizer()
    if std_state is not None:
        std.load_state_dict(std_state)
    else:
        std.fit(tr[0])
    split = [(std.transform(x), np.ascontiguousarray(y)) for x, y in (tr, va, te)]
    return Prepared(name, *split, std)


def _augmentation(args):
    from .. import data

    if not args.augment:
        return None
    ts = []
    if args.crop_padding:
        h, w = args.crop_shape
        ts.append(data.RandomCrop((h, w), padding=args.crop_padding))
    if args.scale or args.rotate:
        ts.append(data.RandomAffine(degrees=args.rotate, scale=(1 - args.scale, 1 + args.scale) if args.scale else None))
    if args.jitter:
        ts.append(data.ColorJitter(brightness=args.jitter, contrast=args.jitter))
    if args.noise:
        ts.append(data.GaussianNoise(args.noise))
    return data.Compose(ts) if ts else None


# Images of at most this many pixels train on one thread unless --threads says otherwise. A
# step of the default CNN on 8x8 digits is ~25 kernel calls of 2-180 us each: too little work
# to split, and on a shared machine every parallel region waits for a core that another
# process holds. Measured on this 2-core machine under load: 30 epochs in 1.3 s on 1 thread,
# 24 s on 2 (bench/NOTES.md, "deepkern train").
SMALL_IMAGE_PIXELS = 256


class _Backend:
    """The --backend and --threads of a command: a context for the whole run (the thread
    count in effect before is restored at the end)."""

    def __init__(self, args):
        import deepkern

        if args.threads and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        self.device = None
        if args.backend == "cuda":
            from ..nn import _array
            try:
                _array.require_cuda()
            except RuntimeError as e:
                raise RuntimeError(f"--backend cuda: {e}") from None
            self.device = "cuda"
        self.name = args.backend
        self._ctx = deepkern.use_backend("numpy") if args.backend == "numpy" else None
        self._threads_given = bool(args.threads)
        self._threads_before = deepkern.get_num_threads()
        if args.threads:
            deepkern.set_num_threads(args.threads)

    def threads_desc(self):
        import deepkern

        n = deepkern.get_num_threads()
        return f"{n} thread{'s' if n != 1 else ''}"

    def fit_threads(self, image_shape):
        """One thread for small images (SMALL_IMAGE_PIXELS) when --threads was not given."""
        import deepkern

        pixels = 1
        for d in image_shape:
            pixels *= int(d)
        if not self._threads_given and pixels <= SMALL_IMAGE_PIXELS:
            deepkern.set_num_threads(1)

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        import deepkern

        deepkern.set_num_threads(self._threads_before)
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False


def _build(args, prepared, num_classes=None, optimizer=None, lr=None):
    """(model, optimizer, scheduler, ema, trainer) for the options in args."""
    import deepkern

    from .. import models, nn, optim
    from .loop import Trainer
    from .setup import make_optimizer, make_scheduler

    x = prepared.train[0]
    deepkern.manual_seed(args.seed)
    model = models.digits_cnn(num_classes or prepared.num_classes, args.channels or models.DIGITS_CHANNELS,
                              in_channels=x.shape[1], image_size=x.shape[2:], dropout=args.dropout, init=args.init)
    device = "cuda" if args.backend == "cuda" else None
    if device is not None:
        from ..nn import _array
        _array.module_to(model, device)          # before the optimizer: its state lives where the weights do
    opt = make_optimizer(optimizer or args.optimizer, model.parameters(), lr=lr if lr is not None else args.lr,
                         momentum=args.momentum, weight_decay=args.weight_decay)
    schedule = "restarts" if args.snapshots else args.schedule
    sched = make_scheduler(schedule, opt, args.epochs, cycle=args.cycle)
    ema = optim.EMA(model.parameters(), decay=args.ema_decay) if args.ema_decay else None
    args.crop_shape = x.shape[2:]
    cls, dist = Trainer, {}
    if getattr(args, "distributed", False):         # deepkern train --distributed (deepkern.distributed)
        from ..distributed import DistributedTrainer as cls
        dist = dict(sync_bn=args.sync_bn, bucket_mb=args.bucket_mb)
    trainer = cls(model, opt, nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), scheduler=sched,
                  ema=ema, batch_size=args.batch_size, seed=args.seed, transform=_augmentation(args),
                  patience=args.patience, snapshots=args.snapshots, max_norm=args.clip_norm,
                  progress=not args.quiet, device=device, **dist)
    return trainer


def _nparams(model):
    return sum(p.data.size for p in model.parameters())


def _fail(msg):
    print(f"deepkern: error: {msg}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------- deepkern train

_TRAIN_CONFIG = ("data", "val_size", "channels", "dropout", "init", "batch_size", "label_smoothing", "optimizer",
                 "lr", "momentum", "weight_decay", "schedule", "cycle", "snapshots", "ema_decay", "patience",
                 "clip_norm", "augment", "crop_padding", "scale", "rotate", "jitter", "noise")


# deepkern train's Adam takes twice torch's default lr (compare shows Adam at 1e-3): over 8 seeds,
# 30 epochs reach 98.6-99.2% test accuracy at 2e-3 and 97.8-98.9% at 1e-3 (bench/NOTES.md).
TRAIN_ADAM_LR = 2e-3


def cmd_train(args):
    """Train the default CNN (or the --data set) and report the held-out test accuracy."""
    if args.distributed:                            # every rank of an mpirun job; errors end every rank
        from ..distributed.command import run_train
        return run_train(args, _train)
    try:
        return _train(args)
    except (ValueError, RuntimeError, FileNotFoundError, TypeError) as e:
        return _fail(str(e))


def _train(args):
    import deepkern

    from .plots import plot_history, require_matplotlib

    if args.plot:
        require_matplotlib()
    if args.lr is None and args.optimizer == "adam":
        args.lr = TRAIN_ADAM_LR
    if args.snapshots and args.schedule not in ("none", "restarts"):
        raise ValueError(f"--snapshots uses the restarts schedule; it cannot be combined with --schedule {args.schedule}")
    with _Backend(args) as backend:
        extra = None
        if args.resume:
            from .. import checkpoint
            _, tree = checkpoint.load(args.resume)
            extra = tree.get("extra") or {}
            if "standardizer" not in extra:
                raise ValueError(f"{args.resume}: not a checkpoint of deepkern train (no data normalization stored)")
        data = load_data(args.data, args.val_size, args.seed, std_state=extra and extra["standardizer"])
        backend.fit_threads(data.train[0].shape[2:])
        trainer = _build(args, data)
        model = trainer.model
        if args.resume:
            trainer.load_checkpoint(args.resume)
        opt = trainer.optimizer
        group = opt.param_groups[0]
        opt_desc = f"{type(opt).__name__} lr {group['lr']:g}"
        if group.get("weight_decay"):
            opt_desc += f" weight decay {group['weight_decay']:g}"
        steps = math.ceil(len(data.train[1]) / (len(data.train[1]) if args.batch_size == "full" else args.batch_size))
        extras = []
        if trainer.scheduler is not None:
            extras.append(f"{type(trainer.scheduler).__name__}")
        if trainer.ema is not None:
            extras.append(f"EMA {trainer.ema.decay:g}")
        if args.patience:
            extras.append(f"early stopping (patience {args.patience})")
        if args.augment:
            extras.append("augmentation")
        if args.snapshots:
            extras.append("snapshot ensemble")
        c1, c2 = args.channels or (16, 32)
        print(f"deepkern train: {data.describe()}")
        print(f"  model: CNN {c1}-{c2} ({_nparams(model):,} parameters, {args.init} init), {opt_desc}, "
              f"batch {args.batch_size} ({steps} steps an epoch), label smoothing {args.label_smoothing:g}"
              + (", " + ", ".join(extras) if extras else ""))
        print(f"  {args.epochs} epochs, {backend.name} backend, {backend.threads_desc()}, seed {args.seed}"
              + (f", resumed at epoch {trainer.epoch} from {args.resume}" if args.resume else ""))
        if not args.quiet:
            from tqdm.auto import tqdm
            trainer.log = tqdm.write
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k in _TRAIN_CONFIG}
        ckpt_extra = {"standardizer": data.std.state_dict(), "config": config}
        start_epoch = trainer.epoch
        t0 = time.perf_counter()
        trainer.fit(*data.train, args.epochs, val=data.val if len(data.val[1]) else None,
                    checkpoint=args.save, checkpoint_extra=ckpt_extra)
        seconds = time.perf_counter() - t0
        ran = trainer.epoch - start_epoch
        h = trainer.history
        if ran:
            print(f"trained {ran} epochs in {seconds:.2f} s ({1e3 * seconds / ran:.0f} ms an epoch"
                  f"{', validation included' if len(data.val[1]) else ''})")
        if h["epoch"]:
            last = len(h["epoch"]) - 1
            line = f"final epoch {h['epoch'][last]}: train loss {h['train_loss'][last]:.4f}"
            if not math.isnan(h["val_loss"][last]):
                line += f", val loss {h['val_loss'][last]:.4f}, val accuracy {100 * h['val_acc'][last]:.1f}%"
            print(line)
        if trainer.best is not None:
            b = trainer.best
            print(f"early stopping: {'stopped' if trainer.stopped_early else 'ran to the end'}; restored the weights "
                  f"of epoch {b['epoch']} (val loss {b['loss']:.4f})")
        if args.save:
            print(f"checkpoint saved to {args.save} (resume with --resume {args.save})")
        if args.plot:
            title = f"deepkern train: {data.name}, {type(opt).__name__}, seed {args.seed}"
            plot_history(h, args.plot, title=title)
            print(f"curves saved to {args.plot}")
        x_te, y_te = data.test
        test_loss, test_acc = trainer.evaluate(x_te, y_te)
        if trainer.snapshots:
            single = test_acc
            test_acc = trainer.accuracy(x_te, y_te, ensemble=True)
            print(f"test accuracy of the last model {100 * single:.1f}%, of the {len(trainer.snapshots)} snapshots "
                  "averaged (below)")
        weights = "EMA weights, " if trainer.ema is not None else ""
        print(f"test loss {test_loss:.4f} ({weights}{len(y_te)} held-out images)")
        print(f"test accuracy {100 * test_acc:.1f}%")
    return 0


def add_train_parser(sub):
    p = sub.add_parser("train", help="train the default CNN on the embedded digits (or your data)",
                       description="Train a small CNN (conv-bn-relu-pool x2, dropout, linear; He init; Adam; label "
                                   "smoothing 0.1) on the embedded 8x8 digits or your data, with a progress bar. "
                                   "The last line of the output states the held-out test accuracy.")
    _add_common(p, epochs=30)
    _add_training_options(p)
    g = p.add_argument_group("output")
    g.add_argument("--save", metavar="PATH", help="save a checkpoint (.npz, no pickle) after every epoch")
    g.add_argument("--resume", metavar="PATH", help="resume from a checkpoint saved with --save (same options); "
                   "--epochs is the total to reach")
    g.add_argument("--plot", metavar="PNG", help="save loss and accuracy curves (needs matplotlib)")
    from ..distributed.command import add_arguments
    add_arguments(p)
    p.set_defaults(func=cmd_train)
    return p


# ---------------------------------------------------------------------------- deepkern compare

COMPARE_ORDER = ("sgd", "momentum", "nag", "adagrad", "adadelta", "rmsprop", "adam", "adamw")


def cmd_compare(args):
    """The same model, data and seed under each optimizer: a table and loss curves."""
    try:
        return _compare(args)
    except (ValueError, RuntimeError, FileNotFoundError, TypeError) as e:
        return _fail(str(e))


def _compare(args):
    import deepkern

    from .plots import plot_compare, require_matplotlib
    from .setup import OPTIMIZERS

    if args.plot:
        require_matplotlib()
    names = [n.strip().lower() for n in args.optimizers.split(",") if n.strip()] if args.optimizers else list(COMPARE_ORDER)
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {', '.join(unknown)}; expected some of {', '.join(OPTIMIZERS)}")
    args.momentum = args.weight_decay = args.lr = args.cycle = args.clip_norm = args.patience = None
    args.schedule, args.snapshots, args.ema_decay, args.augment = "none", False, 0.0, False
    with _Backend(args) as backend:
        data = load_data(args.data, args.val_size, args.seed)
        backend.fit_threads(data.train[0].shape[2:])
        c1, c2 = args.channels or (16, 32)
        print(f"deepkern compare: {data.describe()}")
        print(f"  the same CNN {c1}-{c2} (same initial weights), batch {args.batch_size}, {args.epochs} epochs, "
              f"label smoothing {args.label_smoothing:g}, seed {args.seed}, {backend.name} backend, "
              f"{backend.threads_desc()}")
        histories, rows = {}, []
        for name in names:
            trainer = _build(args, data, optimizer=name)
            trainer.progress = not args.quiet
            lr = trainer.optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            try:
                trainer.fit(*data.train, args.epochs, val=data.val if len(data.val[1]) else None)
                diverged = False
            except FloatingPointError:
                diverged = True
            seconds = time.perf_counter() - t0
            label = f"{type(trainer.optimizer).__name__} (lr {lr:g})"
            h = trainer.history
            histories[label] = h
            if diverged:
                rows.append((type(trainer.optimizer).__name__, lr, math.nan, math.nan, math.nan, seconds))
            else:
                _, test_acc = trainer.evaluate(*data.test)
                rows.append((type(trainer.optimizer).__name__, lr, h["train_loss"][-1], h["val_loss"][-1],
                             test_acc, seconds))
            if not args.quiet:
                r = rows[-1]
                print(f"  {r[0]:9s} done: test accuracy {100 * r[4]:.1f}% ({r[5]:.1f} s)", file=sys.stderr)
        print()
        print(format_table(rows, args.epochs))
        if args.plot:
            title = (f"deepkern compare: {data.name}, CNN {c1}-{c2}, batch {args.batch_size}, seed {args.seed} "
                     "(same initial weights)")
            plot_compare(histories, args.plot, title=title)
            print(f"\nloss curves saved to {args.plot}")
    return 0


def format_table(rows, epochs):
    """The compare table as Markdown (readable as plain text too)."""
    head = ("optimizer", "lr", f"train loss (epoch {epochs})", "val loss", "test accuracy", "time (s)")
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---:|"]
    for name, lr, tl, vl, acc, sec in rows:
        if math.isnan(acc):
            lines.append(f"| {name} | {lr:g} | diverged | | | {sec:.1f} |")
        else:
            vls = "n/a" if math.isnan(vl) else f"{vl:.4f}"
            lines.append(f"| {name} | {lr:g} | {tl:.4f} | {vls} | {100 * acc:.1f}% | {sec:.1f} |")
    return "\n".join(lines)


def add_compare_parser(sub):
    from .setup import OPTIMIZERS

    lrs = ", ".join(f"{k} {v[1]['lr']:g}" for k, v in OPTIMIZERS.items())
    p = sub.add_parser("compare", help="train the same model under each optimizer: table and loss curves",
                       description="Train the same CNN from the same initial weights, on the same batches, under "
                                   "SGD, Momentum, NAG, Adagrad, Adadelta, RMSprop, Adam and AdamW, each with its "
                                   f"own default learning rate ({lrs}), and print a table of the final losses, "
                                   "test accuracy and time.")
    _add_common(p, epochs=30)
    p.add_argument("--optimizers", metavar="LIST", help="comma-separated subset (default: all eight)")
    p.add_argument("--plot", metavar="PNG", help="save the loss curves of every optimizer (needs matplotlib)")
    p.set_defaults(func=cmd_compare)
    return p


# ---------------------------------------------------------------------------- deepkern finetune

def cmd_finetune(args):
    """Transfer learning: pretrain on digits 0-4, fine-tune on few samples of 5-9."""
    try:
        return _finetune(args)
    except (ValueError, RuntimeError, FileNotFoundError, TypeError) as e:
        return _fail(str(e))


def _few_per_class(y, k, rng):
    import numpy as np

    idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < k:
            raise ValueError(f"class {c} has only {len(members)} training samples, fewer than --shots {k}")
        idx.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(idx))


def _finetune(args):
    import numpy as np

    import deepkern

    from .. import _arrays as A
    from .. import data as D
    from .. import models, nn, optim
    from ..nn import _array as NA
    from .loop import Trainer

    if args.data != "digits":
        raise ValueError("deepkern finetune uses the embedded digits (classes 0-4 -> 5-9)")
    with _Backend(args) as backend:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = D.digits_splits(val_size=args.val_size, seed=args.seed)
        backend.fit_threads(x_tr.shape[2:])
        src_tr, src_va = y_tr < 5, y_va < 5
        std = D.Standardizer().fit(x_tr[src_tr])            # the pretrained model's normalization, used throughout
        x_tr, x_va, x_te = std.transform(x_tr), std.transform(x_va), std.transform(x_te)
        tgt_te = y_te >= 5
        xt, yt = x_te[tgt_te], y_te[tgt_te] - 5
        c1, c2 = args.channels or (16, 32)
        print(f"deepkern finetune: digits; pretrain on 0-4 ({int(src_tr.sum())} images), then learn 5-9 from "
              f"{args.shots} images per class; test on the {len(yt)} held-out images of 5-9")
        print(f"  CNN {c1}-{c2}, {backend.name} backend, {backend.threads_desc()}, seed {args.seed}, "
              f"{args.repeats} draws of the few samples")

        def make_model(seed):
            deepkern.manual_seed(seed)
            return models.digits_cnn(5, (c1, c2), dropout=args.dropout, init=args.init)

        dev = backend.device

        def to_dev(model):                  # --backend cuda: the weights on the GPU, before the optimizer
            return model if dev is None else NA.module_to(model, dev)

        crit = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        pre = to_dev(make_model(args.seed))
        pre_trainer = Trainer(pre, optim.Adam(pre.parameters(), lr=2e-3), crit, batch_size=args.batch_size,
                              seed=args.seed, progress=not args.quiet, device=dev)
        t0 = time.perf_counter()
        pre_trainer.fit(x_tr[src_tr], y_tr[src_tr], args.epochs, val=(x_va[src_va], y_va[src_va]))
        _, pre_acc = pre_trainer.evaluate(x_te[~tgt_te], y_te[~tgt_te])
        print(f"pretrained on digits 0-4: {args.epochs} epochs in {time.perf_counter() - t0:.1f} s, test accuracy on "
              f"0-4 {100 * pre_acc:.1f}%")
        pretrained = {k: np.array(A.to_host(v)) for k, v in pre.state_dict().items()}

        rows = {"from scratch (every layer trained)": "scratch",
                "pretrained on 0-4, frozen, new head": "frozen",
                "pretrained on 0-4, fine-tune all (body lr 1e-3, head 1e-2)": "all",
                "control: random body, frozen, new head": "random"}
        results = {name: [] for name in rows}
        pool = np.flatnonzero(y_tr >= 5)
        for r in range(args.repeats):
            rng = np.random.default_rng([args.seed, r, 4])
            pick = pool[_few_per_class(y_tr[pool], args.shots, rng)]
            xs, ys = x_tr[pick], y_tr[pick] - 5
            run_seed = args.seed * 1000 + r
            for name, kind in rows.items():
                model = make_model(run_seed)
                eval_modules = ()
                if kind == "scratch":
                    groups = [{"params": list(model.parameters()), "lr": 2e-3}]
                else:
                    if kind != "random":
                        model.load_state_dict(pretrained)
                    models.replace_head(model, 5, init=args.init)      # a new head for the new classes
                    body, head = model[:-1], model[-1]
                    if kind == "all":
                        groups = [{"params": list(body.parameters()), "lr": 1e-3},
                                  {"params": list(head.parameters()), "lr": 1e-2}]
                    else:
                        body.requires_grad_(False)                     # frozen: no gradient, no step
                        # frozen BatchNorm keeps normalizing with the statistics it was trained with
                        eval_modules = [m for m in body if isinstance(m, nn.BatchNorm2d)]
                        groups = [{"params": list(head.parameters()), "lr": 1e-2}]
                to_dev(model)
                t = Trainer(model, optim.Adam(groups), crit, batch_size=args.batch_size, seed=run_seed,
                            progress=False, eval_modules=eval_modules, device=dev)
                t.fit(xs, ys, args.finetune_epochs)
                results[name].append(t.evaluate(xt, yt)[1])
        print()
        print(f"| model (digits 5-9, {args.shots} training images per class) | test accuracy, mean of {args.repeats} "
              "| min | max |")
        print("|---|---:|---:|---:|")
        for name, accs in results.items():
            a = 100 * np.array(accs)
            print(f"| {name} | {a.mean():.1f}% | {a.min():.1f}% | {a.max():.1f}% |")
        mean = {kind: 100 * np.mean(results[name]) for name, kind in rows.items()}
        print(f"\ntransfer learning: {mean['frozen']:.1f}% with frozen pretrained features vs {mean['scratch']:.1f}% "
              f"from scratch (random frozen features: {mean['random']:.1f}%)")
    return 0


def add_finetune_parser(sub):
    p = sub.add_parser("finetune", help="transfer learning: pretrain on digits 0-4, fine-tune on few samples of 5-9",
                       description="Pretrain the CNN on digits 0-4, then learn digits 5-9 from a few images per class: "
                                   "(a) from scratch, (b) with the pretrained features frozen (requires_grad=False) "
                                   "and a new classifier, (c) fine-tuning every layer (the pretrained body with a "
                                   "10x smaller learning rate than the new head), (d) a control: a random body "
                                   "frozen, new classifier. Prints the test accuracy on 5-9 of each, over several "
                                   "draws of the few images.")
    _add_common(p, epochs=15)
    p.add_argument("--shots", type=_positive_int, default=10, help="training images per class of 5-9 (default 10)")
    p.add_argument("--finetune-epochs", type=_positive_int, default=60, metavar="N",
                   help="epochs on the few images (default 60)")
    p.add_argument("--repeats", type=_positive_int, default=5, help="draws of the few images (default 5)")
    p.set_defaults(func=cmd_finetune)
    return p
