"""
The layers hold: ``methods/`` computes on arrays and never imports FiftyOne
(checked in a fresh interpreter and statically), runs saved under the
0.1 class path still load, and every long call takes ``progress`` as
FiftyOne brain methods do (``True``, ``False``, ``None`` or a callable).
"""

import ast
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fiftyone as fo

import fiftyone_hardness as foh  # noqa: F401 (adds dataset.apply_hardness)
from fiftyone_hardness.dataset_io import runs as fhruns
from fiftyone_hardness.methods import registry
from fiftyone_hardness.methods.base import HardnessError, MethodOutput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the folders and modules that may import FiftyOne; everything else in the
#: package (``methods/``) works on arrays
FIFTYONE_LAYERS = ("dataset_io", "operators", "panels", "benchmarking")
FIFTYONE_MODULES = ("api.py", "__init__.py", "demo.py")

#: where the run classes were stored before the re-layering (0.1)
OLD_CONFIG_CLS = "fiftyone_hardness.methods.runs.HardnessRunConfig"
OLD_RESULTS_CLS = "fiftyone_hardness.methods.runs.HardnessRunResults"


def _norm_score(data, embeddings_field="pixels"):
    """A cheap real method: the distance of each sample to its class mean,
    flagged above the median."""
    X = data.embeddings(embeddings_field)
    means = np.stack(
        [X[data.labels == k].mean(0) for k in range(data.num_classes)]
    )
    score = np.linalg.norm(X - means[data.labels], axis=1)
    threshold = float(np.median(score))
    return MethodOutput(
        fields={"score": score, "flag": score > threshold},
        results={"threshold": threshold, "noise_rate": None},
    )


registry.register_method("layers_norm", _norm_score, "test method")


@pytest.fixture
def small():
    """60 samples, 3 classes, 4-d vectors in ``pixels``."""
    rng = np.random.default_rng(0)
    dataset = fo.Dataset()
    dataset.add_samples(
        [
            fo.Sample(
                filepath="/nonexistent/%d.png" % i,
                ground_truth=fo.Classification(label="abc"[i % 3]),
                pixels=rng.normal(size=4) + i % 3,
            )
            for i in range(60)
        ]
    )
    yield dataset
    if fo.dataset_exists(dataset.name):
        dataset.delete()


# ---------------------------------------------------------------------------
# methods/ never imports FiftyOne


def _package_modules(folder):
    names = []
    for dirpath, dirnames, files in os.walk(os.path.join(REPO, folder)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), REPO)
            parts = rel[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(["fiftyone_hardness"] + parts))
    return sorted(names)


def test_every_methods_module_imports_without_fiftyone(tmp_path):
    modules = _package_modules("methods")
    # the subpackages are walked too
    assert "fiftyone_hardness.methods.rer" in modules
    assert "fiftyone_hardness.methods.dynamics.scores" in modules
    # A fresh interpreter; the package root is registered as a bare
    # namespace, since the package's own __init__ imports FiftyOne (its
    # public API). After each import, FiftyOne must still be absent.
    code = textwrap.dedent("""
        import importlib, json, sys, types

        root = types.ModuleType("fiftyone_hardness")
        root.__path__ = [%r]
        sys.modules["fiftyone_hardness"] = root
        culprits = []
        for name in %r:
            importlib.import_module(name)
            if any(m == "fiftyone" or m.startswith("fiftyone.")
                   for m in sys.modules):
                culprits.append(name)
                break
        print(json.dumps(dict(
            culprits=culprits,
            imported=sorted(m for m in sys.modules
                            if m.startswith("fiftyone_hardness.methods")),
        )))
        """ % (REPO, modules))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-5000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["culprits"] == [], (
        "importing %s imported fiftyone" % result["culprits"]
    )
    assert set(modules) <= set(result["imported"])


def _imports_fiftyone(path):
    """The lines of ``path`` that import ``fiftyone`` (anywhere: module
    level or inside a function)."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(n == "fiftyone" or n.startswith("fiftyone.") for n in names):
            lines.append(node.lineno)
    return lines


def test_only_the_fiftyone_layers_import_fiftyone():
    offenders = {}
    for dirpath, dirnames, files in os.walk(REPO):
        rel_dir = os.path.relpath(dirpath, REPO)
        top = rel_dir.split(os.sep)[0]
        if top in (".venv", ".git", "tests", "speed", "docs", "build"):
            dirnames[:] = []
            continue
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and d != "__pycache__"
            and not d.endswith(".egg-info")
        ]
        for name in files:
            if not name.endswith(".py"):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if top in FIFTYONE_LAYERS or rel in FIFTYONE_MODULES:
                continue
            lines = _imports_fiftyone(os.path.join(dirpath, name))
            if lines:
                offenders[rel] = lines
    assert offenders == {}, "only %s and %s may import fiftyone" % (
        "/, ".join(FIFTYONE_LAYERS) + "/",
        ", ".join(FIFTYONE_MODULES),
    )


def test_the_static_check_sees_lazy_imports(tmp_path):
    # the check above would be empty-handed if it missed these
    path = tmp_path / "m.py"
    path.write_text(
        "import fiftyone_hardness\n"
        "def f():\n"
        "    import fiftyone.core.odm as foo\n"
        "    from fiftyone import ViewField\n"
    )
    assert _imports_fiftyone(str(path)) == [3, 4]


# ---------------------------------------------------------------------------
# Runs saved under the 0.1 class path


def _store_under_old_class_path(dataset, key):
    """Rewrites the run's stored config and results class paths to the
    0.1 ones, as a run saved by 0.1 has them in MongoDB."""
    run_doc = dataset._doc.runs[key]
    config = dict(run_doc.config)
    assert (
        config["cls"] == "fiftyone_hardness.dataset_io.runs.HardnessRunConfig"
    )
    config["cls"] = OLD_CONFIG_CLS
    run_doc.config = config
    run_doc.results.seek(0)
    stored = json.loads(run_doc.results.read().decode())
    assert stored["cls"] == (
        "fiftyone_hardness.dataset_io.runs.HardnessRunResults"
    )
    stored["cls"] = OLD_RESULTS_CLS
    run_doc.results.replace(
        json.dumps(stored).encode(), content_type="application/json"
    )
    run_doc.save()


def test_run_saved_under_the_old_class_path_loads(small, tmp_path):
    small.persistent = True
    small.apply_hardness("layers_norm", run_key="legacy")
    fields = sorted(
        f for f in small.get_field_schema() if f.startswith("legacy")
    )
    assert fields == ["legacy_flag", "legacy_score"]
    _store_under_old_class_path(small, "legacy")

    code = textwrap.dedent("""
        import fiftyone as fo
        import fiftyone.core.odm as foo
        import json

        ds = fo.load_dataset(%r)
        stored = foo.get_db_conn().runs.find_one(
            {"_dataset_id": ds._doc.id, "key": "legacy"}
        )["config"]["cls"]
        info = ds.get_run_info("legacy")
        results = ds.load_run_results("legacy")
        before = sorted(f for f in ds.get_field_schema()
                        if f.startswith("legacy"))
        ds.delete_run("legacy")
        ds.reload()
        print(json.dumps(dict(
            stored=stored,
            config=type(info.config).__module__ + "."
            + type(info.config).__name__,
            results=type(results).__module__ + "." + type(results).__name__,
            method=results.method,
            num_samples=results.num_samples,
            fields=list(info.config.field_suffixes),
            before=before,
            after=sorted(f for f in ds.get_field_schema()
                         if f.startswith("legacy")),
            runs=ds.list_runs(),
        )))
        """ % small.name)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-5000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # the run really was stored under the old path when it was loaded
    assert result["stored"] == OLD_CONFIG_CLS
    assert (
        result["config"]
        == "fiftyone_hardness.dataset_io.runs.HardnessRunConfig"
    )
    assert result["results"] == (
        "fiftyone_hardness.dataset_io.runs.HardnessRunResults"
    )
    assert result["method"] == "layers_norm"
    assert result["num_samples"] == 60
    assert sorted(result["fields"]) == ["flag", "score"]
    assert result["before"] == fields
    assert result["after"] == []
    assert result["runs"] == []
    small.reload()
    assert "legacy" not in small.list_runs()
    assert not [f for f in small.get_field_schema() if f.startswith("legacy")]


def test_old_module_path_names_the_new_classes():
    import fiftyone_hardness.methods.runs as legacy

    assert legacy.HardnessRunConfig is fhruns.HardnessRunConfig
    assert legacy.HardnessRunResults is fhruns.HardnessRunResults
    assert legacy.HardnessBenchmarkResults is fhruns.HardnessBenchmarkResults
    with pytest.raises(AttributeError):
        legacy.NoSuchClass


# ---------------------------------------------------------------------------
# progress: True, False, None or a callable


@pytest.mark.parametrize("progress", [True, False, None])
def test_progress_flags(small, progress, capsys):
    results = small.apply_hardness(
        "layers_norm", run_key="p", progress=progress
    )
    assert results.num_samples == 60
    assert len(small.exists("p_score")) == 60


def test_progress_callable_is_called(small):
    calls = []
    small.apply_hardness(
        "layers_norm",
        run_key="p",
        progress=lambda fraction, message="": calls.append(fraction),
    )
    assert calls, "the callable was never called"
    assert all(0.0 <= f <= 1.0 for f in calls)
    assert calls[-1] == 1.0


@pytest.mark.parametrize("progress", ["yes", 1, 0.5])
def test_bad_progress_is_refused_before_anything_is_written(small, progress):
    schema = set(small.get_field_schema())
    with pytest.raises(HardnessError, match="progress"):
        small.apply_hardness("layers_norm", run_key="p", progress=progress)
    small.reload()
    assert set(small.get_field_schema()) == schema
    assert small.list_runs() == []


@pytest.mark.parametrize("progress", [True, False, None, "callable"])
def test_inject_hardness_takes_every_progress_kind(small, progress):
    from fiftyone_hardness.benchmarking import injection

    calls = []
    callable_given = progress == "callable"
    if callable_given:
        progress = lambda fraction, message="": calls.append(fraction)  # noqa
    clone = injection.inject_hardness(
        small,
        "uniform",
        rate=0.1,
        seed=0,
        progress=progress,
        name="layers-inject-%s" % small.name,
    )
    try:
        assert sum(clone.values(injection.TRUTH_FIELD)) == 6
        if callable_given:
            assert calls and calls[0] == 0.0 and calls[-1] == 1.0
    finally:
        clone.delete()


def test_bad_progress_creates_no_clone(small):
    from fiftyone_hardness.benchmarking import grid, injection

    before = set(fo.list_datasets())
    with pytest.raises(HardnessError, match="progress"):
        injection.inject_hardness(small, "uniform", progress="yes")
    with pytest.raises(HardnessError, match="progress"):
        # a view: the benchmark would clone it into a temporary dataset
        grid.run_benchmark(
            small.limit(50),
            types=["uniform"],
            props=[0.1],
            seeds=[0],
            methods=["layers_norm"],
            embeddings_field="pixels",
            run_key=None,
            progress="yes",
        )
    assert set(fo.list_datasets()) == before
