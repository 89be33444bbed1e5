"""Study ``regularization``: ten regularizers against overfitting, on a small training set
(200 digits, so a CNN memorizes it), each alone on the same base CNN:

    conv(16) - ReLU - pool - conv(32) - ReLU - pool - Linear       (He init, Adam lr 1e-3, batch 32)

none; L2 (weight decay 3e-3 added to the gradient); dropout 0.5 before the classifier;
DropConnect 0.5 on the classifier's weights; batch norm after each convolution; augmentation
(random shifts of 1 pixel, rotations of 10 degrees, zoom 0.9-1.1); label smoothing 0.1; input
noise (Gaussian, std 0.3); weight noise (std 0.02 on every weight, training only); early
stopping (patience 10 on the validation loss, best weights restored); and a residual version
(three residual blocks after the first convolution) without and with stochastic depth 0.3.

The table reports the training accuracy (eval mode, on the 200 training images), the test
accuracy and the gap between them, averaged over the seeds.
"""

from __future__ import annotations

import numpy as np

import deepkern
from deepkern import data, models, nn, optim, train

from . import common


def cnn(bn=False, dropout=0.0, dropconnect=0.0, input_noise=0.0, blocks=0, sd=0.0):
    layers = [nn.GaussianNoise(input_noise)] if input_noise else []

    def conv_block(cin, cout):
        out = [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
        if bn:
            out.append(nn.BatchNorm2d(cout))
        return out + [nn.ReLU()]

    layers += conv_block(1, 16)
    for _ in range(blocks):
        branch = [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)]
        if sd:
            branch.append(nn.StochasticDepth(sd, "row"))
        layers += [nn.Residual(nn.Sequential(*branch)), nn.ReLU()]
    layers += [nn.MaxPool2d(2)] + conv_block(16, 32) + [nn.MaxPool2d(2), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    fc = nn.Linear(32 * 2 * 2, 10)
    layers.append(nn.DropConnect(fc, dropconnect) if dropconnect else fc)
    model = nn.Sequential(*layers)
    models.init_weights(model, "he")
    if blocks:   # start each residual branch near zero: the block begins as the identity
        for m in model.modules():
            if isinstance(m, nn.Residual):
                m.block[2].weight.data *= 0.1
    return model


AUGMENT = data.Compose([data.RandomCrop(8, padding=1), data.RandomAffine(degrees=10, scale=(0.9, 1.1))])

# name -> (model options, trainer options, optimizer options, label smoothing, weight noise)
CONFIGS = {
    "none": ({}, {}, {}, 0.0, 0.0),
    "L2 (3e-3)": ({}, {}, {"weight_decay": 3e-3}, 0.0, 0.0),
    "dropout 0.5": ({"dropout": 0.5}, {}, {}, 0.0, 0.0),
    "DropConnect 0.5": ({"dropconnect": 0.5}, {}, {}, 0.0, 0.0),
    "batch norm": ({"bn": True}, {}, {}, 0.0, 0.0),
    "augmentation": ({}, {"transform": AUGMENT}, {}, 0.0, 0.0),
    "label smoothing 0.1": ({}, {}, {}, 0.1, 0.0),
    "input noise 0.3": ({"input_noise": 0.3}, {}, {}, 0.0, 0.0),
    "weight noise 0.02": ({}, {}, {}, 0.0, 0.02),
    "early stopping": ({}, {"patience": 10}, {}, 0.0, 0.0),
    "residual x3": ({"blocks": 3}, {}, {}, 0.0, 0.0),
    "residual x3 + stoch. depth 0.3": ({"blocks": 3, "sd": 0.3}, {}, {}, 0.0, 0.0),
}


def run(quick=False, epochs=None, seeds=4, train_size=200, log=None):
    E = epochs or (2 if quick else 100)
    seeds = 1 if quick else seeds
    d = common.digits(quick, train_size=100 if quick else train_size)
    res = {name: [] for name in CONFIGS}
    for s in range(seeds):
        for name, (mopt, topt, oopt, smooth, wnoise) in CONFIGS.items():
            deepkern.manual_seed(s)
            model = cnn(**mopt)
            if wnoise:
                nn.with_weight_noise(model, wnoise)
            opt = optim.Adam(model.parameters(), lr=1e-3, **oopt)
            t = train.Trainer(model, opt, nn.CrossEntropyLoss(label_smoothing=smooth), batch_size=32, seed=s,
                              progress=False, **topt)
            with common.Timer() as tm:
                t.fit(d.x, d.y, E, val=(d.xv, d.yv))
            _, tr = common.evaluate(model, d.x, d.y)
            _, te = common.evaluate(model, d.xt, d.yt)
            res[name].append((tr, te, t.epoch, tm.seconds))
            if log:
                log(f"seed {s} {name}: train {100 * tr:.1f}%  test {100 * te:.2f}%  ({t.epoch} epochs)")
    rows = []
    base = np.mean([r[1] for r in res["none"]])
    for name, rs in res.items():
        tr, te = np.mean([r[0] for r in rs]), np.mean([r[1] for r in rs])
        rows.append([name, common.pct(tr), common.pct(te), f"{100 * (tr - te):.2f}", f"{100 * (te - base):+.2f}",
                     f"{np.mean([r[2] for r in rs]):.0f}", f"{np.mean([r[3] for r in rs]):.1f}"])
    notes = [f"{len(d.y)} training images (stratified subset), {len(d.yt)} test images, up to {E} epochs, "
             f"batch 32, Adam lr 1e-3, mean of {seeds} seed(s). Early stopping watches the 144 validation images."]
    return common.Result("regularization", "Regularizers on 200 training digits: train vs test accuracy",
                         ["regularizer", "train acc", "test acc", "gap (pts)", "test vs none (pts)", "epochs",
                          "seconds"], rows, notes, {"res": res})


def plot(result, path):
    plt = common.plt()
    res = result.data["res"]
    names = list(res)
    tr = [100 * np.mean([r[0] for r in res[n]]) for n in names]
    te = [100 * np.mean([r[1] for r in res[n]]) for n in names]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    ax.barh(y + 0.2, tr, 0.4, label="train", color="tab:blue")
    ax.barh(y - 0.2, te, 0.4, label="test", color="tab:orange")
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    lo = min(te) - 3
    ax.set_xlim(max(0, lo), 100.5)
    ax.axvline(te[0], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("accuracy (%)")
    ax.set_title("regularizers on 200 training digits")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2)
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
