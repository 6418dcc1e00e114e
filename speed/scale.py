"""
Scale benchmark: time and peak memory of every phase of a hardness run on
synthetic vector datasets of growing size, next to the floors a user would
hand-write, and how each cost grows with N.

Data (vectors only, no images): Gaussian classes in a 64-d subspace of
``--dim`` (512) dims plus isotropic noise, ``--classes`` (10) balanced
classes, ``--noise`` (20%) of the labels flipped to another class. Each
dataset is written by a bulk insert of sample documents (about 5x faster
than ``add_samples``: ``--compare-insert`` measures both) into the
database ``hardness_bench_scale``, and deleted afterwards unless ``--keep``.

Phases, each in a fresh process (so that its peak is its own; the peak is
the rise of the resident set, ``VmHWM`` reset through
``/proc/self/clear_refs``, over the process's size when the phase starts,
i.e. after imports and loading the dataset; MongoDB's own memory is not
counted):

========== =============================================================
read        ``load_labeled_data`` + ``data.embeddings()`` (labels, ids and
            the (N, D) array; chunked reader)
read-list   the same through the list path (``values()`` +
            ``vectors_to_array``), the loader before issue 14
read-floor  hand-written: ``values(["id", label])`` +
            ``np.stack(values(vectors))``
write       ``dataset_io.runs.write_fields`` of 3 fields (float, bool, str)
write-floor ``set_values`` of the same 3 fields, one call per field
write-vector
            ``write_fields`` of one (N, 100) float64 column (e.g. stored
            probabilities), chunk by chunk
write-vector-floor
            ``set_values`` of the same column as lists
cleanlab-knn, cleanlab-logreg, rer, dynamics
            end to end ``apply_hardness`` (read + method + write); dynamics
            with ``methods=["aum", "loss"]``; with the AUROC of the score
            against the flipped labels
rer-fixed   ``apply_hardness("rer", candidate_coverage=None)``: exactly 10
            nearest classes (the ``rer`` phase grows them until its audit
            covers 99.9%, up to every class); both note the classes used
dynamics-all
            ``apply_hardness("dynamics", epochs=3)``: all 13 methods (about
            40 fields written), 3 epochs so that 1M fits in minutes here
dynamics-default
            the same at the default 20 epochs, where the per-epoch records
            outgrow ``memory_budget_mb`` at 1M (22 minutes here; only
            when named in ``--phases``)
knn-vote    ``probes.knn_vote_probs`` alone on the array
knn-floor   scikit-learn's exact ``NearestNeighbors`` (cosine, brute) and
            the same vote
cl-step     ``confident_learning`` (flags, scores, health summary) alone on
            nearest-centroid probabilities
cl-floor    ``cleanlab.filter.find_label_issues`` on the same
            probabilities
========== =============================================================

A phase that fails or runs past ``--max-seconds`` is reported as
``skipped: <reason>``, and not tried at larger sizes. The growth exponent
of a phase is the slope of log(time) against log(N) between consecutive
sizes (1 = linear, 2 = quadratic).

Run::

    .venv/bin/python speed/scale.py                          # 10k, 30k
    .venv/bin/python speed/scale.py --sizes 10000 100000 1000000 \\
        --phases read read-list read-floor write write-floor
    .venv/bin/python speed/scale.py --sizes 100000 --max-seconds 300 \\
        --json /tmp/scale.json

Timings on a shared machine are noisy; the ratios compare phases run one
after the other on the same dataset.
"""

import argparse
import datetime
import io
import json
import math
import os
import resource
import subprocess
import sys
import time
import traceback
import zlib

# This folder holds speed/cleanlab.py: drop it from the import path, or
# "import cleanlab" would import that script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

os.environ.setdefault("FIFTYONE_DATABASE_NAME", "hardness_bench_scale")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np  # noqa: E402

LABEL_FIELD = "ground_truth"
VECTOR_FIELD = "embeddings"
MISTAKE_FIELD = "mistake"

#: phases in the order they run, and the floor each is compared with
PHASES = [
    "read",
    "read-list",
    "read-floor",
    "write",
    "write-floor",
    "write-vector",
    "write-vector-floor",
    "knn-vote",
    "knn-floor",
    "cl-step",
    "cl-floor",
    "cleanlab-knn",
    "cleanlab-logreg",
    "rer",
    "rer-fixed",
    "dynamics",
    "dynamics-all",
    "dynamics-default",
]
#: what runs without ``--phases``: all but the slowest (22 min at 1M)
DEFAULT_PHASES = [p for p in PHASES if p != "dynamics-default"]
FLOORS = {
    "read": "read-floor",
    "read-list": "read-floor",
    "write": "write-floor",
    "write-vector": "write-vector-floor",
    "knn-vote": "knn-floor",
    "cl-step": "cl-floor",
}


# -- synthetic data ---------------------------------------------------------


def synthetic_chunks(n, dim, num_classes, noise, seed=0, chunk=20000):
    """Yields ``(X, labels, clean)`` chunks of a synthetic dataset: Gaussian
    classes in a 64-d subspace of ``dim`` dims plus isotropic noise, with a
    ``noise`` fraction of labels flipped to another class (uniformly)."""
    rng = np.random.default_rng(seed)
    latent = min(64, dim)
    means = rng.normal(size=(num_classes, latent)) * 0.6
    proj = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    for start in range(0, n, chunk):
        crng = np.random.default_rng([seed, start])
        m = min(chunk, n - start)
        clean = crng.integers(num_classes, size=m)
        z = means[clean] + crng.normal(size=(m, latent))
        X = (z @ proj + 0.5 * crng.normal(size=(m, dim))).astype(np.float32)
        flip = crng.random(m) < noise
        shift = crng.integers(1, num_classes, size=m)
        labels = np.where(flip, (clean + shift) % num_classes, clean)
        yield X, labels, clean


def dataset_name(args, n):
    return "hardness-scale-%d-%dd-%dk-%g" % (
        n,
        args.dim,
        args.classes,
        args.noise,
    )


def make_dataset(args, n):
    """Creates (or reuses, when complete) the synthetic dataset of ``n``
    samples; returns ``(name, seconds to insert or None when reused)``."""
    import fiftyone as fo

    name = dataset_name(args, n)
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
        if len(dataset) == n and dataset.info.get("complete"):
            return name, None
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_sample_field(
        LABEL_FIELD,
        fo.EmbeddedDocumentField,
        embedded_doc_type=fo.Classification,
    )
    dataset.add_sample_field(VECTOR_FIELD, fo.VectorField)
    dataset.add_sample_field(MISTAKE_FIELD, fo.BooleanField)
    start = time.perf_counter()
    _bulk_insert(dataset, args, n)
    seconds = time.perf_counter() - start
    dataset.info["complete"] = True
    dataset.save()
    return name, seconds


def _bulk_insert(dataset, args, n):
    """Inserts the sample documents directly (the format FiftyOne writes:
    a ``VectorField`` value is zlib-compressed ``numpy.save`` bytes)."""
    from bson import ObjectId

    collection = dataset._sample_collection
    dataset_id = dataset._doc.id
    rng = np.random.default_rng(1)
    header = _npy_header(args.dim)
    now = datetime.datetime.utcnow()
    offset = 0
    for X, labels, clean in synthetic_chunks(
        n, args.dim, args.classes, args.noise
    ):
        docs = [
            {
                "_id": ObjectId(),
                "filepath": "/synthetic/%08d.jpg" % (offset + i),
                "tags": [],
                "_media_type": "image",
                "_rand": float(rng.random()),
                LABEL_FIELD: {
                    "_id": ObjectId(),
                    "_cls": "Classification",
                    "tags": [],
                    "label": "class%03d" % labels[i],
                },
                VECTOR_FIELD: zlib.compress(header + X[i].tobytes()),
                MISTAKE_FIELD: bool(labels[i] != clean[i]),
                "_dataset_id": dataset_id,
                "created_at": now,
                "last_modified_at": now,
            }
            for i in range(len(X))
        ]
        collection.insert_many(docs, ordered=False)
        offset += len(X)


def _npy_header(dim):
    with io.BytesIO() as f:
        np.lib.format.write_array_header_1_0(
            f,
            np.lib.format.header_data_from_array_1_0(
                np.zeros(dim, dtype=np.float32)
            ),
        )
        return f.getvalue()  # the magic string, then the header


def compare_insert(args, n):
    """Seconds to write ``n`` samples with ``add_samples`` and with the bulk
    insert, into throwaway datasets."""
    import fiftyone as fo

    X, labels, clean = next(
        synthetic_chunks(n, args.dim, args.classes, args.noise, chunk=n)
    )
    dataset = fo.Dataset()
    start = time.perf_counter()
    dataset.add_samples(
        [
            fo.Sample(
                filepath="/synthetic/%08d.jpg" % i,
                **{
                    LABEL_FIELD: fo.Classification(
                        label="class%03d" % labels[i]
                    ),
                    VECTOR_FIELD: X[i],
                    MISTAKE_FIELD: bool(labels[i] != clean[i]),
                },
            )
            for i in range(n)
        ],
        progress=False,
    )
    add_samples = time.perf_counter() - start
    fo.delete_dataset(dataset.name)
    dataset = fo.Dataset()
    for name, ftype, kw in (
        (
            LABEL_FIELD,
            fo.EmbeddedDocumentField,
            dict(embedded_doc_type=fo.Classification),
        ),
        (VECTOR_FIELD, fo.VectorField, {}),
        (MISTAKE_FIELD, fo.BooleanField, {}),
    ):
        dataset.add_sample_field(name, ftype, **kw)
    start = time.perf_counter()
    _bulk_insert(dataset, args, n)
    bulk = time.perf_counter() - start
    fo.delete_dataset(dataset.name)
    return add_samples, bulk


# -- memory -----------------------------------------------------------------


class PeakMemory(object):
    """The peak rise of this process's resident set within a ``with``
    block, in bytes: ``VmHWM`` after resetting it (``/proc/self/clear_refs``)
    minus ``VmRSS`` at the start. Where the reset is not possible,
    ``ru_maxrss`` is used, which is only right when nothing before the
    block peaked higher (``exact`` says which)."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = True
        except OSError:
            self.exact = False
        self.start = _status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.exact:
            peak = _status("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak *= 1 if sys.platform == "darwin" else 1024
        self.rise = max(0, peak - self.start)
        return False


def _status(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    )


# -- phases (run in a child process) ----------------------------------------


def run_phase(phase, name):
    """Runs one phase on dataset ``name``; returns a dict with ``seconds``,
    ``peak_bytes`` and phase-specific extras."""
    import fiftyone as fo

    _preload()
    dataset = fo.load_dataset(name)
    len(dataset)  # connect and load the schema before measuring
    setup, measured, after = _PHASES[phase](dataset)
    state = setup() if setup else None
    with PeakMemory() as memory:
        start = time.perf_counter()
        out = measured(state)
        seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "peak_bytes": memory.rise,
        "exact_peak": memory.exact,
    }
    if after:
        result.update(after(state, out) or {})
    return result


def _phase_read(dataset):
    from fiftyone_hardness.dataset_io.data import load_labeled_data

    def measured(_):
        data = load_labeled_data(dataset, LABEL_FIELD)
        return data.embeddings(VECTOR_FIELD)

    return None, measured, lambda _, X: {"shape": list(X.shape)}


def _phase_read_list(dataset):
    from fiftyone_hardness.dataset_io.data import load_labeled_data
    from fiftyone_hardness.methods.validation import vectors_to_array

    def measured(_):
        data = load_labeled_data(dataset, LABEL_FIELD)
        values = data.values(VECTOR_FIELD)
        return vectors_to_array(values, data.ids, VECTOR_FIELD)

    return None, measured, lambda _, X: {"shape": list(X.shape)}


def _phase_read_floor(dataset):
    def measured(_):
        ids, labels = dataset.values(["id", LABEL_FIELD + ".label"])
        X = np.stack(dataset.values(VECTOR_FIELD)).astype(
            np.float32, copy=False
        )
        return ids, labels, X

    return None, measured, lambda _, out: {"shape": list(out[2].shape)}


def _write_columns(dataset):
    ids = dataset.values("id")
    rng = np.random.default_rng(0)
    n = len(ids)
    columns = {
        "scale_score": rng.random(n),
        "scale_flag": rng.random(n) < 0.2,
        "scale_pred": np.array(["class%03d" % c for c in range(10)])[
            rng.integers(10, size=n)
        ].astype(object),
    }
    return ids, columns


def _phase_write(dataset):
    from fiftyone_hardness.dataset_io.runs import write_fields

    def measured(state):
        ids, columns = state
        write_fields(dataset, ids, columns)

    def after(state, _):
        dataset.delete_sample_fields(list(state[1]))

    return lambda: _write_columns(dataset), measured, after


def _phase_write_floor(dataset):
    def measured(state):
        _, columns = state
        for name, values in columns.items():
            dataset.set_values(name, values.tolist())

    def after(state, _):
        dataset.delete_sample_fields(list(state[1]))

    return lambda: _write_columns(dataset), measured, after


def _vector_column(dataset):
    ids = dataset.values("id")
    probs = np.random.default_rng(0).dirichlet(np.ones(100), size=len(ids))
    return ids, {"scale_probs": probs}


def _phase_write_vector(dataset):
    _, measured, after = _phase_write(dataset)
    return lambda: _vector_column(dataset), measured, after


def _phase_write_vector_floor(dataset):
    _, measured, after = _phase_write_floor(dataset)
    return lambda: _vector_column(dataset), measured, after


def _arrays(dataset):
    """``(X, labels, K)`` read with the package's loader (not measured)."""
    from fiftyone_hardness.dataset_io.data import load_labeled_data

    data = load_labeled_data(dataset, LABEL_FIELD)
    return data.embeddings(VECTOR_FIELD), data.labels, data.num_classes


def _default_k():
    import dataclasses

    from fiftyone_hardness.methods.confident_learning import CleanlabConfig

    return {f.name: f.default for f in dataclasses.fields(CleanlabConfig)}["k"]


def _phase_knn_vote(dataset):
    from fiftyone_hardness.methods import probes

    def measured(state):
        X, labels, K = state
        return probes.knn_vote_probs(X, labels, K, k=_default_k())

    return lambda: _arrays(dataset), measured, None


def _phase_knn_floor(dataset):
    from sklearn.neighbors import NearestNeighbors

    def measured(state):
        X, labels, K = state
        k = _default_k()
        index = NearestNeighbors(
            n_neighbors=k + 1, metric="cosine", algorithm="brute"
        ).fit(X)
        _, neighbours = index.kneighbors(X)
        # leave-one-out: drop each sample itself (the first neighbour)
        votes = labels[neighbours[:, 1:]]
        probs = np.zeros((len(X), K), dtype=np.float32)
        np.add.at(probs, (np.arange(len(X))[:, None], votes), 1.0 / k)
        return probs

    return lambda: _arrays(dataset), measured, None


def _centroid_probs(dataset):
    """Nearest-centroid softmax probabilities: realistic, cheap inputs for
    the confident-learning step (the same for ours and the floor)."""
    X, labels, K = _arrays(dataset)
    means = np.stack([X[labels == c].mean(axis=0) for c in range(K)])
    logits = X @ means.T - 0.5 * (means**2).sum(axis=1)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits / logits.std())
    probs /= probs.sum(axis=1, keepdims=True)
    return labels, probs


def _phase_cl_step(dataset):
    from fiftyone_hardness.methods.confident_learning import (
        confident_learning,
    )

    def measured(state):
        labels, probs = state
        return confident_learning(labels, probs)

    return lambda: _centroid_probs(dataset), measured, None


def _phase_cl_floor(dataset):
    from cleanlab.filter import find_label_issues

    def measured(state):
        labels, probs = state
        return find_label_issues(labels, probs)

    return lambda: _centroid_probs(dataset), measured, None


def _apply_phase(method, run_key, **kwargs):
    def phase(dataset):
        from fiftyone_hardness.api import apply_hardness

        def measured(_):
            return apply_hardness(
                dataset,
                method,
                label_field=LABEL_FIELD,
                run_key=run_key,
                overwrite=True,
                progress=False,
                embeddings_field=VECTOR_FIELD,
                **kwargs,
            )

        def after(_, results):
            audit = getattr(results, "candidate_audit", None)
            return {"auroc": _auroc(dataset, run_key), "audit": audit}

        return None, measured, after

    return phase


def _auroc(dataset, run_key):
    """``{score field: AUROC against the flipped labels}`` of a run."""
    from sklearn.metrics import roc_auc_score

    import fiftyone as fo

    fields = [
        name
        for name, field in dataset.get_field_schema().items()
        if name.startswith(run_key + "_")
        and name.endswith("score")
        and isinstance(field, fo.FloatField)
    ]
    mistakes = np.asarray(dataset.values(MISTAKE_FIELD), dtype=bool)
    out = {}
    for name in fields:
        scores = np.array(
            [np.nan if s is None else s for s in dataset.values(name)]
        )
        keep = np.isfinite(scores)
        out[name[len(run_key) + 1 :]] = float(
            roc_auc_score(mistakes[keep], scores[keep])
        )
    return out


def _preload():
    """Imports what the phases use, so that the measured memory is the
    data's, not the libraries'."""
    import cleanlab.filter  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    import torch  # noqa: F401

    import fiftyone_hardness.api  # noqa: F401

    for module in (
        "fiftyone_hardness.methods.confident_learning",
        "fiftyone_hardness.methods.probes",
        "fiftyone_hardness.methods.rer",
        "fiftyone_hardness.methods.dynamics",
    ):
        __import__(module)


_PHASES = {
    "read": _phase_read,
    "read-list": _phase_read_list,
    "read-floor": _phase_read_floor,
    "write": _phase_write,
    "write-floor": _phase_write_floor,
    "write-vector": _phase_write_vector,
    "write-vector-floor": _phase_write_vector_floor,
    "knn-vote": _phase_knn_vote,
    "knn-floor": _phase_knn_floor,
    "cl-step": _phase_cl_step,
    "cl-floor": _phase_cl_floor,
    "cleanlab-knn": _apply_phase("cleanlab", "scale_knn", probs="knn"),
    "cleanlab-logreg": _apply_phase(
        "cleanlab", "scale_logreg", probs="logreg"
    ),
    "rer": _apply_phase("rer", "scale_rer"),
    # a fixed 10 nearest classes, whatever the share they cover
    "rer-fixed": _apply_phase(
        "rer", "scale_rer_fixed", candidate_coverage=None
    ),
    "dynamics": _apply_phase(
        "dynamics", "scale_dyn", methods=["aum", "loss"], use_cache=False
    ),
    "dynamics-all": _apply_phase(
        "dynamics", "scale_dyn13", epochs=3, use_cache=False
    ),
    "dynamics-default": _apply_phase(
        "dynamics", "scale_dyn_default", use_cache=False
    ),
}


# -- driver -----------------------------------------------------------------


def run_in_child(phase, name, max_seconds):
    """Runs ``phase`` in a fresh interpreter; returns its result dict, or
    ``{"skipped": reason}``."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        phase,
        name,
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=max_seconds,
            env=dict(os.environ),
        )
    except subprocess.TimeoutExpired:
        return {"skipped": "exceeded --max-seconds %g" % max_seconds}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [
        "exit status %d" % done.returncode
    ]
    return {"skipped": tail[0][:200]}


def child_main(phase, name):
    try:
        result = run_phase(phase, name)
    except Exception as e:  # reported as a skip by the parent
        traceback.print_exc()
        result = {"skipped": "%s: %s" % (type(e).__name__, e)}
    print("RESULT " + json.dumps(result), flush=True)


def growth_exponents(sizes, seconds):
    """Slopes of log(seconds) against log(size) between consecutive sizes
    that both have a time."""
    out = []
    pairs = [(n, s) for n, s in zip(sizes, seconds) if s]
    for (n1, s1), (n2, s2) in zip(pairs, pairs[1:]):
        out.append(math.log(s2 / s1) / math.log(n2 / n1))
    return out


def machine():
    cores = os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * 1024
    except OSError:
        total = None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return cores, total, load


def print_report(args, results, inserts):
    print()
    print(
        "sizes: %s; dim %d, %d classes, %g noise"
        % (
            ", ".join(str(n) for n in args.sizes),
            args.dim,
            args.classes,
            args.noise,
        )
    )
    for n in args.sizes:
        if inserts.get(n) is not None:
            print("  bulk insert of %d samples: %.1f s" % (n, inserts[n]))
    header = "%-16s %9s %10s %9s %9s %8s  %s" % (
        "phase",
        "N",
        "seconds",
        "peak MB",
        "x array",
        "vs floor",
        "notes",
    )
    print(header)
    print("-" * len(header))
    for phase in args.phases:
        for n in args.sizes:
            r = results.get((phase, n))
            if r is None:
                continue
            if "skipped" in r:
                print("%-16s %9d  skipped: %s" % (phase, n, r["skipped"]))
                continue
            array = n * args.dim * 4
            floor = results.get((FLOORS.get(phase), n)) or {}
            ratio = (
                "%.2f" % (r["seconds"] / floor["seconds"])
                if floor.get("seconds")
                else ""
            )
            notes = [
                "AUROC %s %.3f" % (name, auroc)
                for name, auroc in sorted((r.get("auroc") or {}).items())
            ]
            if r.get("audit"):
                notes.append(
                    "nearest classes %s, audit min equal %.3f"
                    % (
                        r["audit"]["nearest_classes"] or "all",
                        r["audit"]["min_other_equal"],
                    )
                )
            if not r.get("exact_peak", True):
                notes.append("peak from ru_maxrss")
            print(
                "%-16s %9d %10.2f %9.0f %9.2f %8s  %s"
                % (
                    phase,
                    n,
                    r["seconds"],
                    r["peak_bytes"] / 2**20,
                    r["peak_bytes"] / array,
                    ratio,
                    ", ".join(notes),
                )
            )
    if len(args.sizes) > 1:
        print()
        print("growth exponent of time (log-log slope between sizes):")
        for phase in args.phases:
            seconds = [
                (results.get((phase, n)) or {}).get("seconds")
                for n in args.sizes
            ]
            slopes = growth_exponents(args.sizes, seconds)
            if slopes:
                print(
                    "  %-16s %s"
                    % (phase, ", ".join("%.2f" % s for s in slopes))
                )


def _summary(result):
    if "skipped" in result:
        return "skipped: " + result["skipped"]
    return "%.2f s, peak +%.0f MB" % (
        result["seconds"],
        result["peak_bytes"] / 2**20,
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument(
        "--phases", nargs="+", default=DEFAULT_PHASES, choices=PHASES
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600,
        help="budget per phase; over it the phase is skipped, and not "
        "tried at larger sizes",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the datasets for reuse"
    )
    parser.add_argument(
        "--compare-insert",
        type=int,
        default=0,
        metavar="N",
        help="also time add_samples against the bulk insert on N samples",
    )
    parser.add_argument("--json", help="write the results to this file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import fiftyone as fo

    cores, total, load = machine()
    print(
        "machine: %s cores, %s GiB memory, load average %s"
        % (
            cores,
            "%.0f" % (total / 2**30) if total else "?",
            "%.1f" % load if load is not None else "?",
        )
    )
    if args.compare_insert:
        add, bulk = compare_insert(args, args.compare_insert)
        print(
            "writing %d samples: add_samples %.1f s, bulk insert %.1f s "
            "(%.1fx)" % (args.compare_insert, add, bulk, add / bulk)
        )
    results, inserts, over_budget = {}, {}, set()
    names = []
    try:
        for n in sorted(args.sizes):
            name, inserts[n] = make_dataset(args, n)
            names.append(name)
            for phase in args.phases:
                if phase in over_budget:
                    result = {"skipped": "over budget at a smaller size"}
                else:
                    result = run_in_child(phase, name, args.max_seconds)
                    if "exceeded" in result.get("skipped", ""):
                        over_budget.add(phase)
                results[(phase, n)] = result
                print("  %s N=%d: %s" % (phase, n, _summary(result)))
    finally:
        if not args.keep:
            for name in names:
                if fo.dataset_exists(name):
                    fo.delete_dataset(name)
    print_report(args, results, inserts)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": {
                        "cores": cores,
                        "memory_bytes": total,
                        "load_average": load,
                    },
                    "args": vars(args),
                    "inserts": inserts,
                    "results": [
                        dict(phase=p, size=n, **r)
                        for (p, n), r in results.items()
                    ],
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()
