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
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import fiftyone.operators as foo
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState

from fiftyone_hardness.dataset_io import run_views
from fiftyone_hardness.dataset_io.runs import list_hardness_runs
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
