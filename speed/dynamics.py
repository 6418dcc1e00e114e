"""
Cost of the training-dynamics recorder and methods against plain training,
measured in the same run on the same data.

Three timings, each the median over ``--repeats`` interleaved rounds:

- ``plain``: the training loop alone (no recorder), the baseline,
- ``cheap``: training with the recorder (per-epoch eval pass, per-minibatch
  margins) plus the cheap methods AUM, Data-IQ, Data Maps, EL2N, small loss
  and Forgetting computed from the record,
- ``all 13``: the recorder with every need (GraNd and VoG through
  ``torch.func`` per-sample gradients, MC dropout, augmentations, the
  K-fold models of cleanlab and the Detector's calibration run) plus all 13
  methods.

Goal: ``cheap / plain <= 1.3``. Data: scikit-learn digits (raw pixels /
16, 1797 samples) with 20% symmetric label noise; ``--model cnn`` trains
the small CNN on the digits as 16x16 images. Run::

    .venv/bin/python speed/dynamics.py [--model mlp|cnn|both]
        [--epochs 20] [--repeats 5] [--threads 1] [--tile 1]
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from fiftyone_hardness.methods.base import select_device
from fiftyone_hardness.methods.dynamics import adapters
from fiftyone_hardness.methods.dynamics import recorder
from fiftyone_hardness.methods.dynamics import scores as fhs
from fiftyone_hardness.methods.dynamics.config import (
    SingleDynamicsConfig,
)
from fiftyone_hardness.methods.label_noise import inject_label_noise


def load(model, tile):
    digits = load_digits()
    X = digits.data.astype(np.float32) / 16.0
    y = digits.target
    if tile > 1:
        rng = np.random.default_rng(0)
        X = np.concatenate(
            [X]
            + [
                X + rng.normal(0, 0.05, X.shape).astype(np.float32)
                for _ in range(tile - 1)
            ]
        )
        y = np.tile(y, tile)
    noisy, mask = inject_label_noise(y, 10, 0.2, seed=0)
    if model == "cnn":
        X = np.kron(X.reshape(-1, 1, 8, 8), np.ones((1, 1, 2, 2), np.float32))
    return X, noisy, mask


def plain(X, y, config, device):
    recorder.train(X, y, 10, config, device=device, record=False)


def cheap(X, y, config, device):
    _, record = recorder.train(X, y, 10, config, device=device)
    return adapters.compute_methods(record, list(fhs.CHEAP_METHODS))


def everything(X, y, config, device):
    record = recorder.record_training(
        X, y, 10, config, needs=recorder.NEEDS, device=device
    )
    return adapters.compute_methods(record)


def bench(model, args):
    X, y, mask = load(model, args.tile)
    config = SingleDynamicsConfig(
        on="images" if model == "cnn" else "embeddings", epochs=args.epochs
    )
    X = recorder.prepare_inputs(X, config)
    device = select_device(args.device)
    cheap(X[:256], y[:256], config, device)  # warm-up
    times = {"plain": [], "cheap": [], "all": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in (
            ("plain", plain),
            ("cheap", cheap),
            ("all", everything),
        ):
            if name == "all" and len(times["all"]) >= args.all_repeats:
                continue
            start = time.perf_counter()
            out = fn(X, y, config, device)
            times[name].append(time.perf_counter() - start)
            if out is not None:
                outputs.update(out)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(
        "\n%s on %s: N=%d, input %s, %d epochs, batch %d, device %s, "
        "%d torch threads"
        % (
            model.upper(),
            "digits (20% symmetric noise)",
            len(y),
            tuple(X.shape[1:]),
            args.epochs,
            config.batch_size,
            device,
            torch.get_num_threads(),
        )
    )
    print("  %-34s %8s %8s" % ("", "median s", "x plain"))
    print(
        "  %-34s %8.3f %8.2f"
        % ("plain training (baseline)", med["plain"], 1.0)
    )
    print(
        "  %-34s %8.3f %8.2f"
        % (
            "recorder + 6 cheap methods",
            med["cheap"],
            med["cheap"] / med["plain"],
        )
    )
    print(
        "  %-34s %8.3f %8.2f"
        % ("recorder + all 13 methods", med["all"], med["all"] / med["plain"])
    )
    print(
        "  runs: plain %s | cheap %s | all %s"
        % tuple(
            ", ".join("%.3f" % t for t in times[k])
            for k in ("plain", "cheap", "all")
        )
    )
    print(
        "  AUROC vs the known mistakes (last measured run): "
        + ", ".join(
            "%s %.3f" % (k, roc_auc_score(mask, v.score))
            for k, v in outputs.items()
        )
    )
    ok = med["cheap"] / med["plain"] <= 1.3
    print("  goal cheap <= 1.3x plain: %s" % ("met" if ok else "NOT met"))
    return med


def _unshadow_cleanlab():
    # run as a script, this folder comes first on sys.path, and its
    # cleanlab.py would shadow the cleanlab package that the cleanlab
    # method imports (lazily, so dropping the folder here is in time)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]


def main():
    _unshadow_cleanlab()
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--model", default="both", choices=["mlp", "cnn", "both"]
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--all-repeats",
        type=int,
        default=2,
        help="rounds that also time all 13 (slowest)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: leave torch's default)",
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=1,
        help="repeat the data this many times (jittered)",
    )
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = ["mlp", "cnn"] if args.model == "both" else [args.model]
    for model in models:
        bench(model, args)


if __name__ == "__main__":
    main()
