"""
Cost of the training-dynamics recorder and methods against plain training,
measured in the same run on the same data; and the peak memory of all 13
methods on a large synthetic dataset.

Timings, each the median over ``--repeats`` interleaved rounds:

- ``plain``: the training loop alone (no recorder), the baseline,
- ``cheap``: training with the recorder (per-epoch eval pass, per-minibatch
  margins) plus the cheap methods AUM, Data-IQ, Data Maps, EL2N, small loss
  and Forgetting computed from the record,
- ``batched``: all 13 methods: the recorder with every need (GraNd and VoG
  in closed form, MC dropout, augmentations) with cleanlab's K-fold models
  and the Detector's calibration run trained alongside the main model as
  one batched model (the default),
- ``sequential``: the same with ``batched_members=False``: the K-fold
  models and the calibration run trained one after another, as before.

Data: ``--data digits`` (scikit-learn digits, raw pixels / 16, 1797
samples; ``--model cnn`` trains the small CNN on them as 16x16 images) or
``--data synthetic`` (``--n`` samples of Gaussian classes in ``--dim``
dimensions, K=10), both with 20% symmetric label noise. Run::

    .venv/bin/python speed/dynamics.py --data synthetic --n 40000
    .venv/bin/python speed/dynamics.py --data digits --model both
    .venv/bin/python speed/dynamics.py --data synthetic --n 200000 \\
        --memory

``--memory`` runs all 13 once (batched, no timing rounds) and prints the
peak resident memory of the process (``ru_maxrss``) and the peak of its
anonymous memory (``RssAnon``, sampled every 0.1 s: it leaves out the
page cache of the disk-backed arrays), next to the size of the inputs.
"""

import argparse
import dataclasses
import os
import resource
import sys
import threading
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from fiftyone_hardness.methods.base import select_device
from fiftyone_hardness.methods.dynamics import adapters
from fiftyone_hardness.methods.dynamics import recorder
from fiftyone_hardness.methods.dynamics import scores as fhs
from fiftyone_hardness.methods.dynamics.config import SingleDynamicsConfig
from fiftyone_hardness.methods.label_noise import inject_label_noise

_GB = float(1 << 30)


# ------------------------------------------------------------------ data


def load(args, model):
    """Returns ``(X, noisy_labels, mislabeled)``."""
    if args.data == "synthetic":
        X, y = synthetic(args.n, args.dim)
    else:
        X, y = digits(args.tile)
    noisy, mask = inject_label_noise(y, 10, 0.2, seed=0)
    if model == "cnn":
        if args.data != "digits":
            raise SystemExit("--model cnn needs --data digits")
        X = np.kron(X.reshape(-1, 1, 8, 8), np.ones((1, 1, 2, 2), np.float32))
    return X, noisy, mask


def synthetic(n, dim, classes=10, seed=0):
    """Gaussian classes: unit noise around class means of std 0.12 per
    dimension (a 40k x 512 MLP reaches ~75% accuracy against the clean
    labels)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)).astype(np.float32) * 0.12
    y = rng.integers(0, classes, n)
    X = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        rows = slice(start, min(start + 65536, n))
        X[rows] = means[y[rows]] + rng.standard_normal(
            (len(y[rows]), dim), dtype=np.float32
        )
    return X, y


def digits(tile):
    data = load_digits()
    X = data.data.astype(np.float32) / 16.0
    y = data.target
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
    return X, y


# ------------------------------------------------------------ the modes


def plain(X, y, config, device):
    recorder.train(X, y, 10, config, device=device, record=False)


def cheap(X, y, config, device):
    _, record = recorder.train(X, y, 10, config, device=device)
    return adapters.compute_methods(record, list(fhs.CHEAP_METHODS))


def all_13(X, y, config, device):
    record = recorder.record_training(
        X, y, 10, config, needs=recorder.NEEDS, device=device
    )
    return adapters.compute_methods(record)


MODES = ("plain", "cheap", "batched", "sequential")


def run_mode(name, X, y, config, device):
    if name == "plain":
        return plain(X, y, config, device)
    if name == "cheap":
        return cheap(X, y, config, device)
    batched = name == "batched"
    return all_13(
        X, y, dataclasses.replace(config, batched_members=batched), device
    )


# ---------------------------------------------------------------- timing


def bench(model, args):
    X, y, mask = load(args, model)
    config = SingleDynamicsConfig(
        on="images" if model == "cnn" else "embeddings", epochs=args.epochs
    )
    X = recorder.prepare_inputs(X, config)
    device = select_device(args.device)
    cheap(X[:256], y[:256], config, device)  # warm-up
    times, outputs = time_rounds(X, y, config, device, args)
    report(model, X, y, mask, config, device, args, times, outputs)


def time_rounds(X, y, config, device, args):
    modes = [m for m in MODES if m in args.modes]
    times = {m: [] for m in modes}
    outputs = {}
    for _ in range(args.repeats):
        for name in modes:
            slow = name in ("batched", "sequential")
            if slow and len(times[name]) >= args.all_repeats:
                continue
            start, cpu = time.perf_counter(), time.process_time()
            out = run_mode(name, X, y, config, device)
            times[name].append(
                (time.perf_counter() - start, time.process_time() - cpu)
            )
            if out is not None:
                outputs[name] = out
    return times, outputs


def report(model, X, y, mask, config, device, args, times, outputs):
    print(
        "\n%s on %s: N=%d, input %s, %d epochs, batch %d, device %s, "
        "%d torch threads"
        % (
            model.upper(),
            "digits" if args.data == "digits" else "synthetic",
            len(y),
            tuple(X.shape[1:]),
            config.epochs,
            config.batch_size,
            device,
            torch.get_num_threads(),
        )
    )
    # CPU time of the process next to wall time: on a shared machine the
    # wall time also measures the other processes
    wall = {k: float(np.median([t[0] for t in v])) for k, v in times.items()}
    cpu = {k: float(np.median([t[1] for t in v])) for k, v in times.items()}
    print(
        "  %-38s %8s %8s %8s %8s"
        % ("", "wall s", "x plain", "CPU s", "x plain")
    )
    labels = {
        "plain": "plain training (baseline)",
        "cheap": "recorder + 6 cheap methods",
        "batched": "all 13, members batched (default)",
        "sequential": "all 13, members sequential (before)",
    }
    for name in times:
        print(
            "  %-38s %8.2f %8s %8.2f %8s"
            % (
                labels[name],
                wall[name],
                _ratio(wall, name),
                cpu[name],
                _ratio(cpu, name),
            )
        )
    if "batched" in cpu and "sequential" in cpu:
        line = "  batched / sequential (CPU time): all 13 %.2f" % (
            cpu["batched"] / cpu["sequential"]
        )
        if "plain" in cpu:
            line += ", their cost beyond plain training %.2f" % (
                (cpu["batched"] - cpu["plain"])
                / (cpu["sequential"] - cpu["plain"])
            )
        print(line)
    print(
        "  runs (wall/CPU s): "
        + " | ".join(
            "%s %s" % (k, ", ".join("%.1f/%.1f" % t for t in v))
            for k, v in times.items()
        )
    )
    for name in ("batched", "sequential"):
        if name in outputs:
            print(
                "  AUROC vs the known mistakes (%s): " % name
                + ", ".join(
                    "%s %.3f" % (k, roc_auc_score(mask, v.score))
                    for k, v in outputs[name].items()
                )
            )


def _ratio(values, name):
    if "plain" not in values:
        return "-"
    return "%.2f" % (values[name] / values["plain"])


# ---------------------------------------------------------------- memory


class _AnonPeak(object):
    """Samples the process's anonymous resident memory (``RssAnon``)."""

    def __init__(self, every=0.1):
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *args):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def memory(args):
    with _AnonPeak() as anon:
        X, y, mask = load(args, "mlp")
        config = SingleDynamicsConfig(
            epochs=args.epochs, memory_budget_mb=args.budget_mb
        )
        X = recorder.prepare_inputs(X, config)
        device = select_device(args.device)
        start, cpu = time.perf_counter(), time.process_time()
        record = recorder.record_training(
            X, y, 10, config, needs=recorder.NEEDS, device=device
        )
        trained = time.perf_counter() - start
        out = adapters.compute_methods(record)
        total = time.perf_counter() - start
        total_cpu = time.process_time() - cpu
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    on_disk = [
        name
        for name in ("logits", "features", "mc_probs", "aug_probs")
        if isinstance(getattr(record, name), np.memmap)
    ]
    print(
        "\nAll 13 on synthetic %d x %d, %d epochs, budget %.0f MiB, "
        "%d torch threads, device %s"
        % (
            len(y),
            X.shape[1],
            config.epochs,
            config.memory_budget_mb,
            torch.get_num_threads(),
            device,
        )
    )
    print(
        "  training + recording %.1f s, with the 13 methods %.1f s "
        "(CPU time %.1f s)" % (trained, total, total_cpu)
    )
    print(
        "  inputs %.2f GB; record in memory %.2f GB, disk-backed: %s"
        % (
            X.nbytes / _GB,
            record.nbytes_in_memory() / _GB,
            ", ".join(on_disk) or "none",
        )
    )
    print(
        "  peak RSS %.2f GB, peak anonymous RSS %.2f GB"
        % (peak_rss / _GB, anon.peak / _GB)
    )
    print(
        "  AUROC: "
        + ", ".join(
            "%s %.3f" % (k, roc_auc_score(mask, v.score))
            for k, v in out.items()
        )
    )


# ------------------------------------------------------------------ main


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
        "--data", default="digits", choices=["digits", "synthetic"]
    )
    parser.add_argument("--n", type=int, default=40000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--model", default="mlp", choices=["mlp", "cnn", "both"]
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--all-repeats",
        type=int,
        default=1,
        help="rounds that also time all 13 (slowest)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated subset of %s" % ", ".join(MODES),
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
        help="repeat the digits this many times (jittered)",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--memory",
        action="store_true",
        help="one run of all 13 with its peak memory",
    )
    parser.add_argument("--budget-mb", type=float, default=2048)
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory:
        memory(args)
        return
    models = ["mlp", "cnn"] if args.model == "both" else [args.model]
    for model in models:
        bench(model, args)


if __name__ == "__main__":
    main()
