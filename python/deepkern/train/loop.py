"""The training loop: Trainer (fit, evaluate, predict, checkpoints) and its helpers.

One epoch, as the loop runs it::

    reseed deepkern's stream with (seed, epoch)    dropout masks are a function of the run's
                                                   seed and the epoch: a resumed run redraws them
    for x, y in loader (shuffled by (seed, epoch)):
        logits = model(x); loss = criterion(logits, y)
        model.zero_grad(); model.backward(criterion.backward())
        optimizer.step()                           (fused_step when clipping or an EMA is on)
        scheduler.step(epoch + (i + 1) / steps)    (warm restarts only: per batch)
    evaluate on the validation split               (with the EMA weights when there is an EMA)
    scheduler.step() / scheduler.step(val_loss)    (per epoch / ReduceLROnPlateau)
    early stopping, snapshot at the end of a cosine cycle, history

Everything that decides the next epoch (weights, BatchNorm statistics, optimizer and scheduler
state, EMA, the epoch counter, the seed, early-stopping and snapshot state) is in
``Trainer.state_dict()``, so a run saved after epoch k and resumed continues exactly as if it
had never stopped (bit for bit on the cpu backend).
"""

from __future__ import annotations

import math
import numbers
import time
from collections import OrderedDict

import numpy as np

import deepkern

from .. import _arrays as _A
from .. import checkpoint as _ckpt
from .. import nn
from ..nn import _array as _NA
from .. import optim
from ..data import DataLoader
from ..data.loader import _int as _as_int
from ..optim import lr_scheduler as _sched

__all__ = ["Trainer", "fit", "HISTORY_KEYS"]

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def _epoch_seed(seed, epoch):
    """The seed of deepkern's stream (dropout) during ``epoch`` of a run seeded ``seed``."""
    return int(np.random.default_rng([seed, epoch, 2]).integers(0, 2**63 - 1))


def _cycle_ends(scheduler, epochs):
    """The epochs (0-based) that end a cycle of CosineAnnealingWarmRestarts, below ``epochs``."""
    ends, length, end = [], scheduler.T_0, scheduler.T_0
    while end <= epochs:
        ends.append(end - 1)
        length *= scheduler.T_mult
        end += length
    return set(ends)


def _check_xy(x, y, what):
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise TypeError(f"{what}: x and y must be numpy arrays, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{what}: expected x (N, ...) and y (N,), got shapes {x.shape} and {y.shape}")
    if len(x) == 0:
        raise ValueError(f"{what}: no samples")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{what}: labels must be integers, got {y.dtype.name}")


class Trainer:
    """Train a classifier: mini-batches, validation, schedules, EMA, early stopping, snapshots.

    Args:
      model        a deepkern.nn Module mapping (N, ...) inputs to (N, classes) logits
      optimizer    a deepkern.optim optimizer over (some of) the model's parameters
      criterion    the loss (default ``nn.CrossEntropyLoss()``); also used for validation
      scheduler    a deepkern.optim.lr_scheduler scheduler or None. StepLR and
                   CosineAnnealingLR step once per epoch, CosineAnnealingWarmRestarts once
                   per batch (fractional epochs), ReduceLROnPlateau once per epoch with the
                   validation loss (the training loss when there is no validation set)
      ema          a deepkern.optim.EMA of the model's parameters or None; when given, every
                   evaluation (validation, test, predict) uses the averaged weights
      batch_size   samples per step: 1 is SGD, ``len(x)`` (or "full") batch gradient descent
      seed         seeds the batch order, the augmentation and the dropout masks (per epoch)
      transform    augmentation applied to each training batch (see deepkern.data.augment)
      patience     early stopping: stop when the validation loss has not improved for this
                   many epochs and restore the weights of the best epoch (None: off)
      snapshots    snapshot ensemble (needs CosineAnnealingWarmRestarts): keep the weights at
                   the end of every cosine cycle; ``predict_proba`` averages their predicted
                   probabilities
      max_norm     clip the global gradient norm to this (None: no clipping)
      eval_modules modules kept in eval mode while training (e.g. the frozen feature extractor
                   of transfer learning, so its BatchNorm keeps its running statistics)
      progress     show a tqdm progress bar (the loss of each batch in its postfix)
      log          a function called with one line of text per epoch (e.g. print), or None
      device       where the model lives: None or "cpu" (NumPy arrays), "cuda" / "cuda:N"
                   (the model already moved there with ``nn._array.module_to(model, "cuda")``
                   before its optimizer was made). x and y stay NumPy arrays on the host; each
                   batch is copied to the device, evaluation copies the logits back.
                   Checkpoints and ``state_dict()`` hold host (NumPy) copies either way

    ``history`` holds one entry per epoch for each of HISTORY_KEYS (val_* are NaN without
    validation data). Each epoch reseeds deepkern's random stream (``deepkern.manual_seed``)
    from (seed, epoch).
    """

    def __init__(self, model, optimizer, criterion=None, *, scheduler=None, ema=None, batch_size=64, seed=0,
                 transform=None, patience=None, snapshots=False, max_norm=None, eval_modules=(),
                 progress=True, log=None, device=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a deepkern.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"optimizer must be a deepkern.optim optimizer, got {type(optimizer).__name__}")
        if scheduler is not None and not isinstance(scheduler, _sched.LRScheduler):
            raise TypeError(f"scheduler must be a deepkern.optim.lr_scheduler scheduler, got {type(scheduler).__name__}")
        if scheduler is not None and scheduler.optimizer is not optimizer:
            raise ValueError("the scheduler drives another optimizer than the trainer's")
        if ema is not None and not isinstance(ema, optim.EMA):
            raise TypeError(f"ema must be a deepkern.optim.EMA, got {type(ema).__name__}")
        if snapshots and not isinstance(scheduler, _sched.CosineAnnealingWarmRestarts):
            raise ValueError("snapshot ensembles need a CosineAnnealingWarmRestarts scheduler "
                             "(a snapshot is taken at the end of each cosine cycle)")
        if batch_size != "full":
            batch_size = _as_int(batch_size, "batch_size", 1)
        if patience is not None:
            patience = _as_int(patience, "patience", 1)
        if max_norm is not None:
            max_norm = float(max_norm)
            if not max_norm > 0:
                raise ValueError(f"max_norm must be positive, got {max_norm}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        kind, index = ("cpu", 0) if device is None else _NA.parse_device(device)
        if kind == "cuda":
            _NA.require_cuda()               # a RuntimeError naming why not, before anything runs
            for name, p in model.named_parameters():
                if not _A.is_cuda(p.data):
                    raise ValueError(f"device {device!r}: parameter {name} is a NumPy array; move the model first "
                                     "(deepkern.nn._array.module_to(model, 'cuda')), then make its optimizer")
        self.device = None if kind == "cpu" else f"cuda:{index}"
        self.model = model
        self.optimizer = optimizer
        self.criterion = nn.CrossEntropyLoss() if criterion is None else criterion
        self.scheduler = scheduler
        self.ema = ema
        self.batch_size = batch_size
        self.seed = _as_int(seed, "seed", 0)
        self.transform = transform
        self.patience = patience
        self.snapshots_enabled = bool(snapshots)
        self.max_norm = max_norm
        self.eval_modules = list(eval_modules)
        self.progress = bool(progress)
        self.log = log
        self.eval_batch_size = 1024
        # what a checkpoint saves besides the components above
        self.epoch = 0                       # epochs completed
        self.history = {k: [] for k in HISTORY_KEYS}
        self.best = None                     # early stopping: see _early_stopping
        self.bad_epochs = 0
        self.stopped_early = False
        self.snapshots = []                  # model states at the end of each cosine cycle

    # ------------------------------------------------------------------ training

    def _batch_schedule(self):
        return isinstance(self.scheduler, _sched.CosineAnnealingWarmRestarts)

    def fit(self, x, y, epochs, val=None, checkpoint=None, checkpoint_extra=None):
        """Train until ``epochs`` epochs have run in total (a resumed trainer continues from
        ``self.epoch``); stops earlier with early stopping. Returns ``history``.

        x: (N, ...) float array of training inputs (already normalized), y: (N,) integer
        labels; val: (x_val, y_val) or None. checkpoint: a path to save the training state to
        after every epoch (see save_checkpoint; ``checkpoint_extra`` is stored with it), so
        an interrupted run can resume. With early stopping, the model ends with the weights
        of the best epoch (the checkpoint keeps the last epoch's, to resume from).
        """
        _check_xy(x, y, "fit")
        epochs = _as_int(epochs, "epochs", 0)
        if val is not None:
            _check_xy(val[0], val[1], "fit: val")
        if self.patience is not None and val is None:
            raise ValueError("early stopping (patience) needs validation data")
        bs = len(x) if self.batch_size == "full" else self.batch_size
        loader = self._loader(x, y, bs)
        steps = len(loader)
        model, crit, opt, sched, ema = self.model, self.criterion, self.optimizer, self.scheduler, self.ema
        batch_sched = self._batch_schedule()
        dev = self.device
        fused = ema is not None or self.max_norm is not None
        cycle_ends = _cycle_ends(sched, epochs) if self.snapshots_enabled else set()
        bar = None
        if self.progress and epochs > self.epoch:
            from tqdm.auto import tqdm
            bar = tqdm(total=(epochs - self.epoch) * steps, unit="step", leave=False, dynamic_ncols=True)
        try:
            while self.epoch < epochs and not self.stopped_early:
                epoch = self.epoch
                t0 = time.perf_counter()
                deepkern.manual_seed(self._stream_seed(epoch))
                loader.set_epoch(epoch)
                model.train()
                for m in self.eval_modules:
                    m.eval()
                if bar is not None:
                    bar.set_description(f"epoch {epoch + 1}/{epochs}", refresh=False)
                lr = float(opt.param_groups[0]["lr"])          # the lr of the epoch's first step
                loss_sum, correct, seen = 0.0, 0, 0
                for i, (xb, yb) in enumerate(loader):
                    if dev is not None:
                        xb, yb = _NA.to_device(xb, dev), _NA.to_device(yb, dev)
                    logits = model(xb)
                    loss = crit(logits, yb)
                    model.zero_grad()
                    model.backward(crit.backward())
                    if fused:
                        optim.fused_step(opt, max_norm=self.max_norm, ema=ema)
                    else:
                        opt.step()
                    if batch_sched:
                        sched.step(epoch + (i + 1) / steps)
                    n = len(yb)
                    if dev is not None:
                        loss = float(loss)                       # (synchronizes with the device)
                        correct += int((logits.argmax(axis=1) == yb).sum())
                    else:
                        correct += int(np.count_nonzero(logits.argmax(axis=1) == yb))
                    loss_sum += loss * n
                    seen += n
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"the training loss became {loss} at epoch {epoch + 1}, "
                                                 f"step {i + 1}: lower the learning rate")
                loss_sum, correct, seen = self._epoch_totals(loss_sum, correct, seen)
                train_loss, train_acc = loss_sum / seen, correct / seen
                val_loss = val_acc = float("nan")
                if val is not None:
                    val_loss, val_acc = self.evaluate(val[0], val[1])
                if sched is not None and not batch_sched:
                    if isinstance(sched, _sched.ReduceLROnPlateau):
                        sched.step(val_loss if val is not None else train_loss)
                    else:
                        sched.step()
                self.epoch = epoch + 1
                row = dict(epoch=self.epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                           val_acc=val_acc, lr=lr, seconds=time.perf_counter() - t0)
                for k in HISTORY_KEYS:
                    self.history[k].append(row[k])
                if epoch in cycle_ends:
                    self.snapshots.append(self._eval_state())
                if self.patience is not None:
                    self._early_stopping(val_loss)
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint, checkpoint_extra)
                if self.log is not None:
                    self.log(self._epoch_line(row, epochs, bar))
        finally:
            if bar is not None:
                bar.close()
        if self.best is not None:
            self.restore_best()
        return self.history

    # Hooks of deepkern.distributed.DistributedTrainer (each rank its shard of every epoch, its
    # own dropout stream, and the epoch's totals summed over the ranks).
    def _loader(self, x, y, batch_size):
        return DataLoader(x, y, batch_size=batch_size, shuffle=True, seed=self.seed, transform=self.transform)

    def _stream_seed(self, epoch):
        return _epoch_seed(self.seed, epoch)

    def _epoch_totals(self, loss_sum, correct, seen):
        return loss_sum, correct, seen

    def _epoch_line(self, row, epochs, bar):
        w = len(str(epochs))
        s = (f"epoch {row['epoch']:{w}d}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:5.1f}%")
        if not math.isnan(row["val_loss"]):
            s += f"  val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:5.1f}%"
        s += f"  lr {row['lr']:.3g}  {row['seconds'] * 1e3:.0f} ms"
        if self.stopped_early:
            s += f"  (early stop: best epoch {self.best['epoch']})"
        return s

    def _early_stopping(self, val_loss):
        """Remember the best epoch's state; stop after ``patience`` epochs without progress."""
        if self.best is None or val_loss < self.best["loss"]:
            self.best = {"loss": float(val_loss), "epoch": self.epoch,
                         "model": self.model.state_dict(copy=True),
                         "ema": None if self.ema is None else self.ema.state_dict()}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.stopped_early = True

    def restore_best(self):
        """Load the weights (and EMA) of the epoch with the best validation loss."""
        if self.best is None:
            raise RuntimeError("no best epoch recorded (early stopping was not used)")
        self.model.load_state_dict(self.best["model"])
        if self.ema is not None and self.best["ema"] is not None:
            self.ema.load_state_dict(self.best["ema"])

    # ------------------------------------------------------------------ evaluation

    def _eval_state(self):
        """A copy of the weights evaluation uses: the model's, the EMA's averages substituted."""
        if self.ema is None:
            return self.model.state_dict(copy=True)
        with self.ema_weights():
            return self.model.state_dict(copy=True)

    def ema_weights(self):
        """Context manager: the model holds the EMA's averaged weights inside the block
        (nothing changes without an EMA)."""
        return _EmaWeights(self.ema)

    def _logits(self, x):
        """Eval-mode logits of x, in chunks of eval_batch_size, without touching training state."""
        model = self.model
        was_training = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            step = self.eval_batch_size
            if self.device is None:
                outs = [model(x[i:i + step]) for i in range(0, len(x), step)]
            else:
                outs = [_A.to_host(model(_NA.to_device(x[i:i + step], self.device))) for i in range(0, len(x), step)]
        finally:
            for m, t in was_training:
                object.__setattr__(m, "training", t)
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def evaluate(self, x, y):
        """(mean loss with the criterion, accuracy) on (x, y), in eval mode, with the EMA
        weights when there is an EMA."""
        _check_xy(x, y, "evaluate")
        with self.ema_weights():
            logits = self._logits(x)
        loss = self.criterion(logits, y)
        acc = float(np.count_nonzero(logits.argmax(axis=1) == y)) / len(y)
        return float(loss), acc

    def predict_proba(self, x, ensemble=None):
        """Class probabilities (N, classes) float64 for inputs x.

        ensemble None: the snapshot ensemble when there are snapshots, else the model (with
        its EMA weights when there is an EMA); True: the average of the snapshots' predicted
        probabilities (an error without snapshots); False: the model alone.
        """
        use = bool(self.snapshots) if ensemble is None else bool(ensemble)
        if not use:
            with self.ema_weights():
                return nn.functional.softmax(self._logits(x).astype(np.float64))
        if not self.snapshots:
            raise ValueError("no snapshots: train with snapshots=True and a CosineAnnealingWarmRestarts "
                             "scheduler through at least one cycle")
        current = self.model.state_dict(copy=True)
        try:
            probs = None
            for state in self.snapshots:
                self.model.load_state_dict(state)
                p = nn.functional.softmax(self._logits(x).astype(np.float64))
                probs = p if probs is None else probs + p
        finally:
            self.model.load_state_dict(current)
        return probs / len(self.snapshots)

    def accuracy(self, x, y, ensemble=None):
        """Fraction of x classified as y (see predict_proba for ``ensemble``)."""
        _check_xy(x, y, "accuracy")
        return float(np.count_nonzero(self.predict_proba(x, ensemble).argmax(axis=1) == y)) / len(y)

    # ------------------------------------------------------------------ state and checkpoints

    def state_dict(self):
        """(model state, everything else) -- see save_checkpoint. Arrays are copies (NumPy
        arrays, also for a model on a CUDA device)."""
        sched = self.scheduler
        best = self.best
        if best is not None and self.device is not None:
            best = dict(best, model=_host_state(best["model"]))
        tree = {
            "epoch": self.epoch,
            "seed": self.seed,
            "optimizer": {"class": type(self.optimizer).__name__, "state": self.optimizer.state_dict()},
            "scheduler": None if sched is None else {"class": type(sched).__name__, "state": sched.state_dict()},
            "ema": None if self.ema is None else self.ema.state_dict(),
            "history": {k: list(v) for k, v in self.history.items()},
            "early_stopping": {"best": best, "bad_epochs": self.bad_epochs, "stopped": self.stopped_early},
            "snapshots": [_host_state(s) for s in self.snapshots],
        }
        return _host_state(self.model.state_dict(copy=True)), tree

    def save_checkpoint(self, path, extra=None):
        """Write the whole training state to ``path`` (.npz, no pickle; see deepkern.checkpoint).

        extra: a dict of arrays, numbers, strings, lists and dicts stored alongside (e.g. the
        data normalization and the command line), returned by load_checkpoint.
        """
        model_state, tree = self.state_dict()
        tree["extra"] = {} if extra is None else dict(extra)
        _ckpt.save(path, model_state, tree)

    def load_checkpoint(self, path):
        """Restore a state saved by save_checkpoint into this trainer (same model architecture,
        optimizer class and options structure, scheduler class, EMA or not). Returns the
        checkpoint's ``extra`` dict.

        Everything is checked before anything is assigned: a damaged file, a missing entry, a
        model whose keys, shapes or dtypes differ, another optimizer or scheduler class, an
        EMA present on one side only -- each is a ValueError naming the problem, and the
        trainer, model, optimizer, scheduler and EMA are left untouched.
        """
        model_state, tree = _ckpt.load(path)
        where = f"load_checkpoint: {path}"
        _check_tree(tree, where)
        _check_model_state(self.model, model_state, f"{where}: model")
        es = tree["early_stopping"]
        best = es["best"]
        if best is not None:
            _check_model_state(self.model, best["model"], f"{where}: best model")
        for i, s in enumerate(tree["snapshots"]):
            _check_model_state(self.model, s, f"{where}: snapshot {i}")
        opt_saved = tree["optimizer"]
        if opt_saved["class"] != type(self.optimizer).__name__:
            raise ValueError(f"{where}: the checkpoint's optimizer is {opt_saved['class']}, "
                             f"this trainer's is {type(self.optimizer).__name__}")
        sched_saved = tree["scheduler"]
        if (sched_saved is None) != (self.scheduler is None):
            raise ValueError(f"{where}: the checkpoint has {'no' if sched_saved is None else 'a'} learning-rate "
                             f"scheduler, this trainer has {'none' if self.scheduler is None else 'one'}")
        if sched_saved is not None:
            _check_scheduler_state(self.scheduler, sched_saved, where)
        if (tree["ema"] is None) != (self.ema is None) or (best is not None and (best["ema"] is None) != (self.ema is None)):
            raise ValueError(f"{where}: the checkpoint was saved {'without' if tree['ema'] is None else 'with'} an EMA, "
                             f"this trainer has {'none' if self.ema is None else 'one'}")
        # The components validate their own state before writing; a later failure rolls the
        # earlier ones back, so nothing changes unless everything loads.
        opt_before = self.optimizer.state_dict()
        ema_before = None if self.ema is None else self.ema.state_dict()
        try:
            self.optimizer.load_state_dict(opt_saved["state"])
            if self.ema is not None:
                self.ema.load_state_dict(tree["ema"])
                if best is not None:
                    _scratch_ema(self.ema).load_state_dict(best["ema"])   # validate only
        except (TypeError, ValueError, KeyError) as e:
            self.optimizer.load_state_dict(opt_before)
            if ema_before is not None:
                self.ema.load_state_dict(ema_before)
            raise ValueError(f"{where}: {type(e).__name__}: {e}") from None
        if sched_saved is not None:
            self.scheduler.load_state_dict(sched_saved["state"])
        self.model.load_state_dict(model_state)
        self.epoch = tree["epoch"]
        self.seed = tree["seed"]
        self.history = {k: list(tree["history"][k]) for k in HISTORY_KEYS}
        self.best = None if best is None else {"loss": float(best["loss"]), "epoch": int(best["epoch"]),
                                               "model": OrderedDict(best["model"]), "ema": best["ema"]}
        self.bad_epochs = es["bad_epochs"]
        self.stopped_early = es["stopped"]
        self.snapshots = [OrderedDict(s) for s in tree["snapshots"]]
        return dict(tree.get("extra") or {})


def _host_state(state):
    """A state dict with NumPy arrays (CUDA arrays copied to the host; NumPy ones kept)."""
    if all(isinstance(v, np.ndarray) for v in state.values()):
        return state
    return OrderedDict((k, _A.to_host(v)) for k, v in state.items())


def _array(p):
    """The array of a Parameter, or an ndarray as is (an EMA tracks either)."""
    return p.data if isinstance(p, nn.Parameter) else p


class _EmaWeights:
    """Swap the EMA's averages into the parameters for the duration of a with-block."""

    def __init__(self, ema):
        self.ema = ema
        self.saved = None

    def __enter__(self):
        if self.ema is not None:
            self.saved = [_A.copy(_array(p)) for p in self.ema.params]
            self.ema.copy_to()
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            for p, a in zip(self.ema.params, self.saved):
                _array(p)[...] = a
        return False


def _scratch_ema(ema):
    """An EMA over copies of ema's parameters (to validate a state dict without touching ema)."""
    return optim.EMA([np.array(_A.to_host(_array(p))) for p in ema.params], decay=ema.decay)


# ---------------------------------------------------------------------------- checkpoint checks

def _check_tree(tree, where):
    """The structure of a checkpoint's tree (types of every field the trainer reads)."""
    def bad(msg):
        return ValueError(f"{where}: malformed checkpoint: {msg}")

    need = ("epoch", "seed", "optimizer", "scheduler", "ema", "history", "early_stopping", "snapshots")
    missing = [k for k in need if k not in tree]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    for k in ("epoch", "seed"):
        v = tree[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad(f"{k} must be a non-negative int, got {v!r}")
    o = tree["optimizer"]
    if not isinstance(o, dict) or not isinstance(o.get("class"), str) or not isinstance(o.get("state"), dict):
        raise bad("optimizer must be {'class': name, 'state': state_dict}")
    s = tree["scheduler"]
    if s is not None and (not isinstance(s, dict) or not isinstance(s.get("class"), str)
                          or not isinstance(s.get("state"), dict)):
        raise bad("scheduler must be None or {'class': name, 'state': state_dict}")
    if tree["ema"] is not None and not isinstance(tree["ema"], dict):
        raise bad("ema must be None or an EMA state_dict")
    h = tree["history"]
    if not isinstance(h, dict) or any(k not in h or not isinstance(h[k], list) for k in HISTORY_KEYS):
        raise bad(f"history must hold the lists {', '.join(HISTORY_KEYS)}")
    lengths = {len(h[k]) for k in HISTORY_KEYS}
    if lengths != {tree["epoch"]}:
        raise bad(f"history has {sorted(lengths)} entries for {tree['epoch']} epochs")
    for k in HISTORY_KEYS:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in h[k]):
            raise bad(f"history[{k!r}] must hold numbers")
    es = tree["early_stopping"]
    if not isinstance(es, dict) or not {"best", "bad_epochs", "stopped"} <= set(es):
        raise bad("early_stopping must hold best, bad_epochs and stopped")
    if isinstance(es["bad_epochs"], bool) or not isinstance(es["bad_epochs"], int) or es["bad_epochs"] < 0:
        raise bad("early_stopping.bad_epochs must be a non-negative int")
    if not isinstance(es["stopped"], bool):
        raise bad("early_stopping.stopped must be a bool")
    b = es["best"]
    if b is not None:
        if not isinstance(b, dict) or not {"loss", "epoch", "model", "ema"} <= set(b):
            raise bad("early_stopping.best must hold loss, epoch, model and ema")
        if not isinstance(b["loss"], (int, float)) or isinstance(b["epoch"], bool) or not isinstance(b["epoch"], int):
            raise bad("early_stopping.best: loss must be a number and epoch an int")
        if not isinstance(b["model"], dict):
            raise bad("early_stopping.best.model must be a state dict")
    if not isinstance(tree["snapshots"], list) or not all(isinstance(s, dict) for s in tree["snapshots"]):
        raise bad("snapshots must be a list of state dicts")
    if tree.get("extra") is not None and not isinstance(tree["extra"], dict):
        raise bad("extra must be a dict")


def _check_model_state(model, state, where):
    """Every key of the model present with the model's shape and dtype, no other key."""
    targets = model.state_dict()
    missing = [k for k in targets if k not in state]
    unexpected = [k for k in state if k not in targets]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(repr(k) for k in missing))
    if unexpected:
        problems.append("unexpected " + ", ".join(repr(k) for k in unexpected))
    for k, dst in targets.items():
        src = state.get(k)
        if src is None:
            continue
        if not isinstance(src, np.ndarray):
            problems.append(f"{k!r} is a {type(src).__name__}, not an array")
        elif src.shape != dst.shape:
            problems.append(f"{k!r} has shape {src.shape} in the checkpoint, {dst.shape} in the model")
        elif src.dtype != np.dtype(_A.dtype(dst)):
            problems.append(f"{k!r} is {src.dtype.name} in the checkpoint, {np.dtype(_A.dtype(dst)).name} in the model")
    if problems:
        raise ValueError(f"{where} does not match this model: " + "; ".join(problems))


def _check_scheduler_state(sched, saved, where):
    if saved["class"] != type(sched).__name__:
        raise ValueError(f"{where}: the checkpoint's scheduler is {saved['class']}, this trainer's is "
                         f"{type(sched).__name__}")
    current = sched.state_dict()
    state = saved["state"]
    if set(state) != set(current):
        raise ValueError(f"{where}: the scheduler state has keys {sorted(state)}, expected {sorted(current)}")
    for k, v in current.items():
        got = state[k]
        if isinstance(v, (list, tuple)):
            ok = isinstance(got, (list, tuple)) and len(got) == len(v)
        elif isinstance(v, bool):
            ok = isinstance(got, bool)
        elif isinstance(v, numbers.Real):
            ok = isinstance(got, (int, float)) and not isinstance(got, bool)
        else:
            ok = v is None or got is None or type(got) is type(v)
        if not ok:
            raise ValueError(f"{where}: scheduler state {k!r} is {got!r}, expected something like {v!r}")


def fit(model, train, val=None, *, optimizer=None, epochs=10, **kwargs):
    """Train ``model`` on ``train`` = (x, y) and return the Trainer (its ``history`` has the
    curves). optimizer: a deepkern.optim optimizer (default Adam(lr=1e-3) over the model's
    parameters); other keyword arguments go to Trainer."""
    if optimizer is None:
        optimizer = optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    trainer = Trainer(model, optimizer, **kwargs)
    trainer.fit(train[0], train[1], epochs, val=val)
    return trainer
