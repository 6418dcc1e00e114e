"""
Delegated execution: a hardness run is queued as a delegated operation from
Python (as the App does when a user picks "Delegate"), then a separate
worker process executes the queue with FiftyOne's
``DelegatedOperationService`` -- the loop that ``fiftyone delegated launch``
runs. Afterwards the run and its fields are on the dataset and the Hardness
panel loads them.

The run is RER through its ``compute_rer`` operator when that operator is
registered; until then a stand-in plugin provides a ``HardnessOperator`` for
a small real method, which exercises the same operator and run machinery.

Beyond one machine: two ``fiftyone delegated launch`` worker processes
embed the two halves of a dataset at the same time, each as one delegated
``compute_embeddings`` operation on a view (a shard), and together write
what one process writes; their progress is stored on their operations and
shown in the operator's form.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fiftyone.core.odm as foodm
import fiftyone.operators as foo
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, ExecutionRunState

import fiftyone_hardness as foh
from fiftyone_hardness.dataset_io import embeddings as fhemb
from fiftyone_hardness.dataset_io import run_views
from fiftyone_hardness.dataset_io.embeddings import EMBEDDINGS_INFO_KEY
from fiftyone_hardness.dataset_io.runs import list_hardness_runs
from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.panels.hardness_panel import HardnessPanel

from app_helpers import PLUGIN, RER_FAST, FakePanelContext, has_rer, plugin_dir

STAND_IN_PLUGIN = "@fiftyone-hardness/test-method"

_STAND_IN_YML = """\
name: "@fiftyone-hardness/test-method"
description: "A stand-in hardness method for the delegated-execution test"
version: "0.0.1"
operators:
  - compute_centroid
"""

_STAND_IN_INIT = '''\
"""A stand-in hardness method: distance to the class centroid."""
import numpy as np

from fiftyone_hardness.methods import registry
from fiftyone_hardness.methods.base import MethodOutput
from fiftyone_hardness.operators.common import HardnessOperator


def _centroid_distance(data, embeddings_field="pixels"):
    X = data.embeddings(embeddings_field)
    data.progress(0.5, "centroids")
    centroids = np.stack(
        [X[data.labels == k].mean(0) for k in range(data.num_classes)]
    )
    score = np.linalg.norm(X - centroids[data.labels], axis=1)
    threshold = float(np.quantile(score, 0.9))
    pred = np.asarray(data.classes)[
        np.argmin(((X[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    ]
    return MethodOutput(
        fields={"score": score, "flag": score > threshold, "pred": pred},
        results={"threshold": threshold, "noise_rate": None},
    )


class ComputeCentroid(HardnessOperator):
    method = "centroid"
    label = "Test: distance to the class centroid"
    description = "A stand-in hardness method"


def register(p):
    if "centroid" not in registry.list_methods():
        registry.register_method("centroid", _centroid_distance, "stand-in")
    p.register(ComputeCentroid)
'''


def _write_stand_in(plugins):
    folder = os.path.join(plugins, "hardness-test-method")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "fiftyone.yml"), "w") as f:
        f.write(_STAND_IN_YML)
    with open(os.path.join(folder, "__init__.py"), "w") as f:
        f.write(_STAND_IN_INIT)


def _choose_operator(plugins):
    """Returns ``(uri, params, method)``: RER's operator when registered,
    else the stand-in."""
    uris = {op.uri for op in foo.list_operators()}
    rer_uri = PLUGIN + "/compute_rer"
    if has_rer() and rer_uri in uris:
        params = dict(RER_FAST)
        return rer_uri, params, "rer"
    _write_stand_in(plugins)
    uri = STAND_IN_PLUGIN + "/compute_centroid"
    assert uri in {op.uri for op in foo.list_operators()}
    return uri, {"embeddings_field": "pixels"}, "centroid"


_WORKER = textwrap.dedent("""
    import json, sys
    from fiftyone.operators.delegated import DelegatedOperationService

    service = DelegatedOperationService()
    results = service.execute_queued_operations(
        operator=sys.argv[1], dataset_name=sys.argv[2], log=True
    )
    print(json.dumps([r.to_json() if r else None for r in results],
                     default=str))
    """)


def test_queued_run_is_executed_by_a_worker(tmp_path, digits):
    digits.persistent = True
    with plugin_dir(tmp_path) as plugins:
        uri, params, method = _choose_operator(plugins)
        params = dict(params, label_field="ground_truth", run_key="queued")

        queued = foo.execute_operator(
            uri,
            dict(view=digits.view(), params=params),
            request_delegation=True,
        )
        assert queued.delegated, "the operation was not delegated"
        service = DelegatedOperationService()
        ops = service.list_operations(
            operator=uri,
            dataset_name=digits.name,
            run_state=ExecutionRunState.QUEUED,
        )
        assert len(ops) == 1
        assert "queued" not in digits.list_runs()  # nothing ran yet

        env = dict(os.environ, FIFTYONE_PLUGINS_DIR=plugins)
        worker = subprocess.run(
            [sys.executable, "-c", _WORKER, uri, digits.name],
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        assert worker.returncode == 0, worker.stderr[-4000:]
        outcome = json.loads(worker.stdout.strip().splitlines()[-1])
        assert len(outcome) == 1 and not outcome[0].get("error"), (
            outcome,
            worker.stderr[-4000:],
        )

    doc = service.get(ops[0].id)
    assert doc.run_state == ExecutionRunState.COMPLETED, doc.result
    assert doc.status is not None  # progress was reported
    assert doc.result.result["run_key"] == "queued"  # the run's summary
    print(
        "\ndelegated %s run, last progress %.2f %r"
        % (method, doc.status.progress or 0, doc.status.label)
    )

    digits.reload()
    assert list_hardness_runs(digits) == ["queued"]
    results = digits.load_run_results("queued")
    assert results.method == method
    for field in ("queued_score", "queued_flag", "queued_pred"):
        assert field in results.fields
        assert len(digits.exists(field)) == len(digits)
    flags = np.asarray(digits.values("queued_flag"))
    assert results.num_flagged == int(flags.sum())

    # the Hardness panel loads the run
    ctx = FakePanelContext(digits)
    panel = HardnessPanel()
    panel.on_load(ctx)
    assert ctx.panel.state.run_key == "queued"
    assert "Samples scored | %d" % len(digits) in ctx.panel.state.figures
    assert len(ctx.panel.data.class_chart[0]["x"]) == 10
    assert sum(ctx.panel.data.histogram[0]["y"]) == len(digits)
    assert len(ctx.panel.state.flagged_table) == min(
        run_views.TABLE_ROWS, results.num_flagged
    )
    json.dumps(panel.render(ctx).to_json())


# ------------------------------------------- embeddings over two shards

#: the embeddings the shard test computes
_SHARD_PARAMS = {"embeddings_field": "emb", "image_size": 32}


def _launch_worker(env, log_path):
    """Starts one ``fiftyone delegated launch`` worker (the CLI of this
    environment), logging to ``log_path``."""
    cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    if os.path.exists(cli):
        command = [cli, "delegated", "launch"]
    else:
        command = [
            sys.executable,
            "-c",
            "import sys; from fiftyone.core.cli import main; "
            "sys.argv = ['fiftyone', 'delegated', 'launch']; main()",
        ]
    log = open(log_path, "w")
    return (
        subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT
        ),
        log,
    )


def _stop_worker(worker, log):
    """Stops a worker started by :func:`_launch_worker` as a user does
    (Ctrl-C), killing it only if it does not exit."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    log.close()


def _wait_for(condition, timeout, what, logs=()):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                "timed out waiting for %s\n%s"
                % (what, "\n".join(_read(p)[-3000:] for p in logs))
            )
        time.sleep(0.1)


def _read(path):
    with open(path) as f:
        return f.read()


def _raw_samples(dataset, drop):
    """The sample documents as stored, without the fields in ``drop``."""
    collection = foodm.get_db_conn()[dataset._sample_collection_name]
    return [
        {k: v for k, v in doc.items() if k not in drop}
        for doc in collection.find({}, sort=[("_id", 1)])
    ]


def _delegated_notice(operator, dataset):
    """The notice of queued and running delegated operations that the
    operator's form shows in the App for ``dataset``, or None."""
    ctx = ExecutionContext(
        request_params={"dataset_name": dataset.name, "params": {}}
    )
    form = operator.resolve_input(ctx).to_json()["type"]["properties"]
    notice = form.get("delegated_runs")
    return notice["view"]["label"] if notice else None


def test_two_workers_embed_disjoint_shards(tmp_path, digits):
    """Two ``fiftyone delegated launch`` workers run one delegated
    ``compute_embeddings`` each, on the two halves of a dataset, at the
    same time and on one MongoDB; together they fill the field as one
    process does, record its model once, change nothing else, and store
    their progress on their delegated operations for the App."""
    digits.delete_samples(digits.skip(200))
    digits.persistent = True  # the workers are other processes
    assert len(digits) == 200
    field = _SHARD_PARAMS["embeddings_field"]
    reference = digits.clone()
    schema_before = set(digits.get_field_schema())
    before = _raw_samples(digits, drop=("last_modified_at",))

    with plugin_dir(tmp_path) as plugins:
        env = dict(
            os.environ, FIFTYONE_PLUGINS_DIR=plugins, PYTHONUNBUFFERED="1"
        )
        logs = [str(tmp_path / ("worker%d.log" % i)) for i in (1, 2)]
        workers = [_launch_worker(env, path) for path in logs]
        try:
            # both workers poll the queue before anything is queued, so
            # neither can take both operations before the other is up
            _wait_for(
                lambda: all(
                    "service running" in _read(p).lower() for p in logs
                ),
                120,
                "the workers to start",
                logs,
            )
            operator = foo.get_operator(PLUGIN + "/compute_embeddings")
            # two halves in a fixed order (filepath is indexed)
            ordered = digits.sort_by("filepath")
            shards = [ordered[:100], ordered[100:]]
            ids = []
            for shard in shards:
                queued = operator(shard, delegate=True, **_SHARD_PARAMS)
                assert queued.delegated, queued.error
                ids.append(queued.result["id"])

            service = DelegatedOperationService()
            seen = {i: [] for i in ids}  # statuses seen while running
            shown = []  # what the App's form said meanwhile
            polls = []
            terminal = (ExecutionRunState.COMPLETED, ExecutionRunState.FAILED)

            def finished():
                done = True
                for i in ids:
                    doc = service.get(i)
                    if doc.run_state == ExecutionRunState.RUNNING:
                        if doc.status is not None:
                            seen[i].append(
                                (doc.status.progress, doc.status.label)
                            )
                    done = done and doc.run_state in terminal
                polls.append(None)
                if not done and len(polls) % 3 == 0:
                    shown.append(_delegated_notice(operator, digits))
                return done

            # the form lists both operations as soon as they are queued
            first = _delegated_notice(operator, digits)
            assert first.count("compute_embeddings: ") == 2, first

            started = time.monotonic()
            _wait_for(finished, 240, "the two operations", logs)
            elapsed = time.monotonic() - started
        finally:
            for worker, log in workers:
                _stop_worker(worker, log)

    docs = [service.get(i) for i in ids]
    outputs = [_read(p) for p in logs]
    for doc in docs:
        assert doc.run_state == ExecutionRunState.COMPLETED, (
            doc.result,
            outputs,
        )
        assert not doc.result.error, doc.result.error
    for output in outputs:
        assert "Traceback" not in output, output

    # two workers, one operation each, at the same time
    ran = [[str(i) for i in ids if "operation %s" % i in o] for o in outputs]
    assert sorted(len(r) for r in ran) == [1, 1], (ran, outputs)
    assert set(ran[0] + ran[1]) == {str(i) for i in ids}
    a, b = docs
    assert a.started_at < b.completed_at and b.started_at < a.completed_at

    # each run's progress was stored while it ran, and at its end; the
    # operator's form in the App showed it (the model loads for seconds;
    # the 100 small images then take under one, which the form may miss)
    progress = r"running, \d+% \((loading efficientnet_lite0|\d+/100 images)"
    assert any(re.search(progress, text or "") for text in shown), shown
    assert _delegated_notice(operator, digits) is None  # all done
    for doc in docs:
        assert seen[doc.id], "no progress stored while %s ran" % doc.id
        assert doc.status.progress == 1.0, doc.status
        assert doc.status.label == "100/100 images", doc.status
        assert doc.started_at <= doc.status.updated_at <= doc.completed_at
        # the operator's summary is stored as the operation's result
        summary = doc.result.result
        assert summary["num_embedded"] == 100, summary
        assert summary["num_failed"] == 0, summary
        assert summary["embeddings_field"] == field

    # the field is complete and equal to one process's embeddings
    digits.reload()
    assert len(digits.exists(field)) == 200
    result = foh.compute_embeddings(reference, **_SHARD_PARAMS)
    assert result["num_embedded"] == 200
    ours = dict(zip(*digits.values(["filepath", field])))
    theirs = dict(zip(*reference.values(["filepath", field])))
    assert set(ours) == set(theirs)
    paths = sorted(ours)
    ours = np.stack([ours[p] for p in paths])
    theirs = np.stack([theirs[p] for p in paths])
    worst = float(np.abs(ours - theirs).max())
    assert np.allclose(ours, theirs, rtol=1e-5, atol=1e-5), worst

    # one provenance record, the one a single process writes
    info = foh.api.get_embeddings_info(digits, field)
    assert info == foh.api.get_embeddings_info(reference, field)
    assert digits.get_field(field).info == {EMBEDDINGS_INFO_KEY: info}
    recorded = [
        name
        for name, f in digits.get_field_schema().items()
        if EMBEDDINGS_INFO_KEY in (f.info or {})
    ]
    assert recorded == [field]

    # nothing else on the samples or in the schema changed
    assert set(digits.get_field_schema()) == schema_before | {field}
    assert _raw_samples(digits, drop=(field, "last_modified_at")) == before

    # a shard with another model or input size is refused, naming both
    with pytest.raises(HardnessError, match="holds efficientnet_lite0"):
        foh.compute_embeddings(
            digits[:10], embeddings_field=field, image_size=64
        )
    clip = {"model": "ViT-B-32", "pretrained": None, "dim": 512}
    with pytest.raises(HardnessError, match="choose another embeddings_f"):
        fhemb._claim_field(digits[:10], field, clip)
    assert foh.api.get_embeddings_info(digits, field) == info
    assert len(digits.exists(field)) == 200
    reference.delete()
    print(
        "\ntwo workers embedded 2 x 100 samples in %.1f s (queue to "
        "completion); max |difference| to one process %.2g; progress "
        "stored while running: %s"
        % (elapsed, worst, [seen[i][:3] for i in ids])
    )
    print("the form said: %s" % sorted({t for t in shown if t})[:3])
