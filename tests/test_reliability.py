"""
Fault injection: the user's labels and fields survive SIGKILL and SIGINT at
random moments of apply/undo and of a run's write, and two processes writing
at once.

After every fault the invariants are checked on the raw database documents:

- every label is byte-identical to its original, or it is corrected and
  its backup is byte-identical to the original (nothing is lost);
- no document holds a field missing from the dataset's schema;
- a final undo restores every label byte for byte;
- every listed run loads; an interrupted one is repaired in one call;
  ``delete_run`` leaves none of its fields behind.

CI runs a short version (a few kills of each kind and one race); set
``FIFTYONE_HARDNESS_FAULTS=long`` for many more.
"""

import os
import random
import signal
import subprocess
import sys
import time

import bson
import pytest

import fiftyone as fo

from fiftyone_hardness.dataset_io import locks, review, runs
from fiftyone_hardness.methods.base import HardnessError

LONG = os.environ.get("FIFTYONE_HARDNESS_FAULTS") == "long"
KILLS = 30 if LONG else 4
RACE_ITERATIONS = 30 if LONG else 10
LEASE = 1.5
WORKER = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "fault_worker.py"
)
CLASSES = [str(c) for c in range(10)]


@pytest.fixture
def short_lease(monkeypatch):
    # a killed holder's lock must expire within the test's patience
    monkeypatch.setattr(locks, "DEFAULT_LEASE", LEASE)
    monkeypatch.setenv("FIFTYONE_HARDNESS_LOCK_LEASE", str(LEASE))


@pytest.fixture
def reviewed(short_lease):
    """A persistent dataset (worker processes load it by name) of 400
    decorated labels, 120 of them reviewed as wrong."""
    rng = random.Random(0)
    dataset = fo.Dataset("hardness-faults-%d" % os.getpid())
    dataset.persistent = True
    samples = []
    for i in range(400):
        label = fo.Classification(
            label=rng.choice(CLASSES), confidence=rng.random()
        )
        if i % 3 == 0:
            label["annotator"] = "anna"
            label.tags = ["checked"]
        samples.append(
            fo.Sample(filepath="/tmp/fault-%d.png" % i, ground_truth=label)
        )
    dataset.add_samples(samples)
    for sample in dataset.skip(10).limit(120):
        other = [c for c in CLASSES if c != sample.ground_truth.label]
        review.mark_label_wrong(dataset, sample.id, rng.choice(other))
    yield dataset
    dataset.delete()


def _raw(dataset, field):
    docs = dataset._sample_collection.find({}, {field: 1}).sort("_id", 1)
    return {doc["_id"]: bson.encode({"v": doc.get(field)}) for doc in docs}


def _check_invariants(dataset, originals):
    dataset.reload()
    labels = _raw(dataset, "ground_truth")
    backups = _raw(dataset, "ground_truth_original")
    none = bson.encode({"v": None})
    for _id, original in originals.items():
        if backups[_id] == none:
            assert labels[_id] == original, "label changed without backup"
        else:
            assert backups[_id] == original, "backup is not the original"
    schema = dataset.get_field_schema(include_private=True)
    declared = {f.db_field or name for name, f in schema.items()}
    for doc in dataset._sample_collection.find({}):
        undeclared = set(doc) - declared
        assert not undeclared, "undeclared fields %s" % undeclared


def _start(dataset, action, iterations, run_key="faulty"):
    env = dict(os.environ, FIFTYONE_HARDNESS_LOCK_LEASE=str(LEASE))
    proc = subprocess.Popen(
        [
            sys.executable,
            WORKER,
            dataset.name,
            action,
            str(iterations),
            run_key,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


def test_kills_during_apply_and_undo_lose_no_label(reviewed):
    originals = _raw(reviewed, "ground_truth")
    rng = random.Random(1)
    for attempt in range(KILLS):
        proc = _start(reviewed, "apply_undo", 1000)
        time.sleep(rng.uniform(0.05, 1.5))
        sig = signal.SIGKILL if attempt % 2 == 0 else signal.SIGINT
        proc.send_signal(sig)
        proc.wait(timeout=60)
        _check_invariants(reviewed, originals)

    result = review.undo_corrections(reviewed)
    assert result["num_edited"] == 0
    assert _raw(reviewed, "ground_truth") == originals
    assert not reviewed.has_field("ground_truth_original")


def test_two_processes_racing_apply_and_undo(reviewed):
    originals = _raw(reviewed, "ground_truth")
    first = _start(reviewed, "apply_undo", RACE_ITERATIONS)
    second = _start(reviewed, "apply_undo", RACE_ITERATIONS)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    for proc, (out, err) in zip((first, second), outs):
        assert proc.returncode == 0, err
        assert out.count("\n") >= RACE_ITERATIONS
    _check_invariants(reviewed, originals)
    review.undo_corrections(reviewed)
    assert _raw(reviewed, "ground_truth") == originals


def test_a_busy_lock_names_its_holder(reviewed):
    with locks.dataset_lock(reviewed, "a long write"):
        holder = locks.current_lock(reviewed)
        assert holder["purpose"] == "a long write"
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fiftyone as fo; "
                "from fiftyone_hardness.dataset_io import locks; "
                "d = fo.load_dataset(%r)\n"
                "try:\n"
                "    with locks.dataset_lock(d, 'x', timeout=0.5): pass\n"
                "except Exception as e: print(type(e).__name__, e)"
                % reviewed.name,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "HardnessError" in proc.stdout, proc.stderr
        assert "a long write" in proc.stdout
        assert locks.describe_holder() in proc.stdout
    assert locks.current_lock(reviewed) is None


# ------------------------------------------------------------- run writes


@pytest.fixture
def scored(short_lease):
    """A persistent dataset of 3000 labels and a user field that ends like
    a run's field (``keep_score``), for run writes."""
    import fault_worker

    fault_worker.register()
    rng = random.Random(2)
    dataset = fo.Dataset("hardness-run-faults-%d" % os.getpid())
    dataset.persistent = True
    dataset.add_samples(
        [
            fo.Sample(
                filepath="/tmp/run-fault-%d.png" % i,
                ground_truth=fo.Classification(label=rng.choice(CLASSES)),
                keep_score=rng.random(),
            )
            for i in range(3000)
        ]
    )
    yield dataset
    dataset.delete()


def _user_fields(dataset):
    return (
        _raw(dataset, "ground_truth"),
        _raw(dataset, "keep_score"),
        _raw(dataset, "filepath"),
    )


def _check_runs(dataset, user):
    dataset.reload()
    assert _user_fields(dataset) == user
    schema = dataset.get_field_schema(include_private=True)
    declared = {f.db_field or name for name, f in schema.items()}
    for doc in dataset._sample_collection.find({}):
        assert not set(doc) - declared, set(doc) - declared
    for key in runs.list_hardness_runs(dataset):
        results = dataset.load_run_results(key, cache=False)
        assert results.num_samples == len(dataset)
        flags = dataset.count_values(key + "_flag").get(True, 0)
        assert results.num_flagged == flags
        pids = dataset.distinct(key + "_pid")
        assert len(pids) == 1, "run %s mixes processes %s" % (key, pids)


def _delete_all_runs(dataset, user):
    for key in dataset.list_runs():
        dataset.delete_run(key)
    dataset.reload()
    left = [f for f in dataset.get_field_schema() if f.startswith("faulty")]
    assert not left
    assert _user_fields(dataset) == user


def test_kills_during_run_writes_leave_a_loadable_state(scored):
    import fiftyone_hardness as foh

    user = _user_fields(scored)
    rng = random.Random(3)
    for attempt in range(KILLS):
        proc = _start(scored, "run", 1000)
        time.sleep(rng.uniform(0.3, 3.0))
        sig = signal.SIGKILL if attempt % 2 == 0 else signal.SIGINT
        proc.send_signal(sig)
        proc.wait(timeout=60)
        _check_runs(scored, user)
        foh.repair_hardness_runs(scored)
        _check_runs(scored, user)
        # re-running the key is never refused because of a dead run; a
        # run the worker finished before it died is a complete run, which
        # only overwrite=True replaces
        overwrite = attempt % 2 == 1
        if not overwrite and "faulty" in runs.list_hardness_runs(scored):
            with pytest.raises(HardnessError, match="already exists"):
                scored.apply_hardness(
                    "test_fault_scores", run_key="faulty", progress=False
                )
            overwrite = True
        scored.apply_hardness(
            "test_fault_scores",
            run_key="faulty",
            progress=False,
            overwrite=overwrite,
        )
        _check_runs(scored, user)
        scored.delete_run("faulty")
    _delete_all_runs(scored, user)


def test_same_key_from_two_processes_one_wins(scored):
    user = _user_fields(scored)
    procs = [_start(scored, "run_once", 1, run_key="same") for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["done", "refused"], outs
    assert "already exists" in " ".join(outs)
    _check_runs(scored, user)
    assert "same" in scored.list_runs()


def test_two_keys_written_at_once_keep_both_schemas(scored):
    user = _user_fields(scored)
    procs = [_start(scored, "run", 3, run_key=key) for key in ("one", "two")]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert out.count("done") == 3, out
    _check_runs(scored, user)
    schema = scored.get_field_schema()
    for key in ("one", "two"):
        assert {key + "_score", key + "_flag", key + "_c29"} <= set(schema)
        scored.delete_run(key)
    scored.reload()
    assert not [
        f for f in scored.get_field_schema() if f[:4] in ("one_", "two_")
    ]
    assert _user_fields(scored) == user


def test_ctrl_c_during_a_write_is_raised_between_batches():
    """A Ctrl-C that lands inside a database write is held until the batch
    has completed (an abandoned pymongo request is still carried out by the
    server, after any cleanup run at once), then raised."""
    from fiftyone_hardness.dataset_io.locks import hold_interrupts

    batches = []
    with pytest.raises(KeyboardInterrupt):
        with hold_interrupts() as interrupts:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            batches.append("finished")  # the write in flight completes
            interrupts.check()
            batches.append("never")
    assert batches == ["finished"]
    # outside, Ctrl-C is Python's again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
