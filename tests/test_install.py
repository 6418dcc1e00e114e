"""
Both install paths, checked in processes where this checkout's editable
install is invisible:

- the FiftyOne way: the repository copied into a fresh plugins directory
  (what ``fiftyone plugins download <url>`` does), nothing pip-installed;
  every operator of ``fiftyone.yml`` and the panel must register, and
  ``import fiftyone_hardness`` must work in that process too;
- ``pip install``: a wheel built from a copy of the tree, installed into a
  fresh folder; every module of the package must import from there (a
  subpackage missing from ``pyproject.toml`` would fail here).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_NAME = "@fiftyone-hardness/hardness"

# Runs first in every child process: drops the editable install of this
# checkout (a meta-path finder and a path hook that a .pth file installs),
# so that ``fiftyone_hardness`` can only come from where the test puts it.
_HIDE_EDITABLE_INSTALL = textwrap.dedent("""
    import importlib, importlib.util, sys
    sys.meta_path[:] = [
        f for f in sys.meta_path
        if not getattr(f, "__module__", "").startswith("__editable__")
    ]
    sys.path_hooks[:] = [
        h for h in sys.path_hooks if "__editable__" not in repr(h)
    ]
    sys.path[:] = [p for p in sys.path if "__editable__" not in str(p)]
    sys.path_importer_cache.clear()
    for _name in list(sys.modules):
        if _name.startswith(("__editable__", "fiftyone_hardness")):
            del sys.modules[_name]
    importlib.invalidate_caches()
    """)


def _copy_tree(dst):
    """Copies the repository's files (tracked and new, not ignored: no
    .venv, no caches) to ``dst``, as a plugin download or an sdist does."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell which files ship")
    for rel in listed:
        src = os.path.join(REPO, rel)
        if not os.path.isfile(src):
            continue  # deleted in the working tree
        target = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(src, target)


def _run_hidden(code, tmp_path, env=None, timeout=600):
    """Runs ``code`` in a fresh interpreter without the editable install,
    from a directory outside the repository; returns its last stdout line
    parsed as JSON."""
    script = tmp_path / "child.py"
    script.write_text(_HIDE_EDITABLE_INSTALL + textwrap.dedent(code))
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_the_editable_install_is_hidden_in_the_child(tmp_path):
    # the other tests mean something only if this holds
    result, _ = _run_hidden(
        """
        import json
        spec = importlib.util.find_spec("fiftyone_hardness")
        print(json.dumps(spec is None))
        """,
        tmp_path,
    )
    assert result is True


def test_plugin_installed_the_fiftyone_way_registers(tmp_path):
    with open(os.path.join(REPO, "fiftyone.yml")) as f:
        manifest = yaml.safe_load(f)
    plugins = tmp_path / "plugins"
    plugin_dir = plugins / "fiftyone-hardness"
    _copy_tree(str(plugin_dir))
    assert not (plugin_dir / ".venv").exists()

    env = dict(os.environ)
    env["FIFTYONE_PLUGINS_DIR"] = str(plugins)
    # the conftest's isolated test database, inherited
    assert env["FIFTYONE_DATABASE_NAME"].startswith("fiftyone_hardness_tests_")
    result, stderr = _run_hidden(
        """
        import json, logging

        assert importlib.util.find_spec("fiftyone_hardness") is None

        warnings = []

        class _Collect(logging.Handler):
            def emit(self, record):
                warnings.append(record.getMessage())

        logging.getLogger("fiftyone").addHandler(_Collect(logging.WARNING))

        import eta.core.utils as etau
        import fiftyone as fo
        import fiftyone.operators as foo
        import fiftyone.plugins as fop
        import fiftyone.plugins.context as fopc

        plugins = {p.name: p.directory for p in fop.list_plugins()}
        errors = [
            e for ctx in fopc.build_plugin_contexts()
            if ctx.name == %r for e in ctx.errors
        ]
        operators = [op.uri for op in foo.list_operators()]
        panels = [op.uri for op in foo.list_operators(type="panel")]

        # after the plugin loaded: the package by its own name, and the run
        # classes by the paths FiftyOne stores in MongoDB
        import fiftyone_hardness as foh
        import fiftyone_hardness.methods.rer.config

        config_cls = etau.get_class(
            "fiftyone_hardness.dataset_io.runs.HardnessRunConfig"
        )
        legacy_cls = etau.get_class(
            "fiftyone_hardness.methods.runs.HardnessRunConfig"
        )
        print(json.dumps(dict(
            plugins=plugins, errors=errors, warnings=warnings,
            operators=operators, panels=panels, file=foh.__file__,
            entry_points=[
                callable(getattr(foh, n, None)) for n in
                ("apply_hardness", "compute_rer", "compute_cleanlab",
                 "compute_dynamics", "compute_consensus")
            ],
            dataset_method=hasattr(fo.Dataset, "apply_hardness"),
            same_run_class=config_cls is legacy_cls,
        )))
        """ % PLUGIN_NAME,
        tmp_path,
        env=env,
    )
    assert result["plugins"].get(PLUGIN_NAME) == str(plugin_dir)
    assert result["errors"] == [], "\n".join(result["errors"])
    failed = [w for w in result["warnings"] if "Failed to register" in w]
    assert not failed, "\n".join(failed) + stderr[-3000:]
    assert "Failed to register" not in stderr

    prefix = PLUGIN_NAME + "/"
    expected = {prefix + name for name in manifest["operators"]}
    ours = {uri for uri in result["operators"] if uri.startswith(prefix)}
    assert ours == expected | {prefix + p for p in manifest["panels"]}
    assert {prefix + p for p in manifest["panels"]} <= set(result["panels"])

    # ``import fiftyone_hardness`` resolves to the copy in the plugins dir
    assert result["file"] == str(plugin_dir / "__init__.py")
    assert all(result["entry_points"])
    assert result["dataset_method"]
    assert result["same_run_class"]


def test_pip_installed_wheel_holds_every_module(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    _copy_tree(str(src))
    # every module of the copied tree that belongs to the package
    expected = set()
    for rel in _walk_py(src):
        if rel.split("/")[0] in ("tests", "speed", "docs"):
            continue
        parts = rel[: -len(".py")].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        expected.add(".".join(["fiftyone_hardness"] + parts))

    wheels = tmp_path / "wheels"
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # no build isolation: builds offline with this environment's setuptools
    subprocess.run(
        pip
        + [
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = list(wheels.glob("fiftyone_hardness-*.whl"))
    subprocess.run(
        pip
        + [
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )

    result, _ = _run_hidden(
        """
        import json, pkgutil
        sys.path.insert(0, %r)
        import fiftyone_hardness

        names, failed = [fiftyone_hardness.__name__], {}
        for info in pkgutil.walk_packages(
            fiftyone_hardness.__path__, "fiftyone_hardness."
        ):
            if info.name.endswith("__main__"):
                continue
            names.append(info.name)
            try:
                importlib.import_module(info.name)
            except Exception as e:
                failed[info.name] = repr(e)
        print(json.dumps(dict(
            file=fiftyone_hardness.__file__, names=names, failed=failed,
        )))
        """ % str(site),
        tmp_path,
    )
    assert result["file"] == str(site / "fiftyone_hardness" / "__init__.py")
    assert result["failed"] == {}
    expected = {n for n in expected if not n.endswith("__main__")}
    missing = expected - set(result["names"])
    assert (
        not missing
    ), "not in the wheel (list them in pyproject.toml): %s" % (sorted(missing))


def _walk_py(root):
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                yield rel.replace(os.sep, "/")
