"""deepkern.train: the training loop, checkpoints, and the ``train`` / ``compare`` /
``finetune`` commands.

    import deepkern
    from deepkern import data, models, optim, train, nn

    deepkern.manual_seed(0)
    (x, y), (xv, yv), (xt, yt) = data.digits_splits(val_size=0.1, seed=0)
    std = data.Standardizer().fit(x)
    x, xv, xt = std.transform(x), std.transform(xv), std.transform(xt)
    model = models.digits_cnn()
    opt = optim.Adam(model.parameters(), lr=2e-3)
    trainer = train.Trainer(model, opt, nn.CrossEntropyLoss(label_smoothing=0.1), seed=0)
    trainer.fit(x, y, epochs=30, val=(xv, yv))
    print(trainer.evaluate(xt, yt))              # (loss, accuracy)
    trainer.save_checkpoint("run.npz")           # .npz, no pickle; load_checkpoint resumes

``Trainer`` (loop.py) documents the loop; ``make_optimizer`` and ``OPTIMIZERS`` hold the
per-optimizer defaults of the commands; ``benchmark_epoch`` is the hook of
``deepkern bench``'s training-epoch case.
"""

from .bench import BENCH_STEPS, benchmark_epoch
from .loop import HISTORY_KEYS, Trainer, fit
from .setup import OPTIMIZERS, SCHEDULES, make_optimizer, make_scheduler

__all__ = ["Trainer", "fit", "HISTORY_KEYS", "OPTIMIZERS", "SCHEDULES", "make_optimizer", "make_scheduler",
           "benchmark_epoch", "BENCH_STEPS"]
