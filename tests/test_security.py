"""
Paths typed into App forms stay inside the directories the deployment
allows (operators/paths.py): no ``..`` or symlink escapes, no writing or
reading elsewhere through the benchmark's or the injection's output folder.
Python callers keep full control.
"""

import os

import pytest

import fiftyone.operators as foo

from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.operators import paths


@pytest.fixture
def allowed(tmp_path, monkeypatch):
    root = tmp_path / "allowed"
    root.mkdir()
    monkeypatch.setenv(paths.ENV_VAR, str(root))
    return root


def test_paths_inside_the_allowed_dirs_resolve(allowed):
    assert paths.app_path(str(allowed / "reports"), "x") == os.path.realpath(
        allowed / "reports"
    )
    assert paths.app_path(str(allowed), "x") == os.path.realpath(allowed)


@pytest.mark.parametrize(
    "hostile",
    [
        "/etc",
        "/etc/passwd",
        "{root}/../outside",
        "{root}/a/../../outside",
        "{root}-sibling",
        "~/.ssh",
        "{root}/link-out/x",
    ],
)
def test_hostile_paths_are_refused(allowed, tmp_path, hostile):
    (tmp_path / "outside").mkdir(exist_ok=True)
    link = allowed / "link-out"
    if not link.exists():
        os.symlink(tmp_path / "outside", link)
    path = hostile.format(root=allowed)
    with pytest.raises(HardnessError, match="outside the directories"):
        paths.app_path(path, "the report folder")
    assert paths.path_error(path, "the report folder")


def test_default_is_fiftyones_own_directories(monkeypatch):
    import fiftyone as fo

    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    assert os.path.realpath(fo.config.default_dataset_dir) in (
        paths.allowed_dirs()
    )


def _form(operator, dataset, **params):
    ctx = foo.ExecutionContext(
        request_params=dict(dataset_name=dataset.name, params=params)
    )
    return operator.resolve_input(ctx).type.properties


def test_forms_refuse_hostile_output_folders(digits, allowed, tmp_path):
    from fiftyone_hardness.operators.benchmark import RunHardnessBenchmark
    from fiftyone_hardness.operators.perturb import InjectHardness

    escape = str(allowed / ".." / "elsewhere")
    inject = _form(
        InjectHardness(), digits, hardness="zoom_shift", output_dir=escape
    )
    assert inject["output_dir"].invalid
    assert "outside the directories" in inject["output_dir"].error_message
    ok = _form(
        InjectHardness(),
        digits,
        hardness="zoom_shift",
        output_dir=str(allowed / "imgs"),
    )
    assert not ok["output_dir"].invalid

    bench = _form(
        RunHardnessBenchmark(),
        digits,
        label_field="ground_truth",
        output_dir="/etc",
    )
    if "output_dir" in bench:
        assert bench["output_dir"].invalid
    assert not os.path.exists(tmp_path / "elsewhere")


def test_operator_execution_refuses_hostile_folders(
    digits, allowed, plugins_dir, tmp_path
):
    from fiftyone.operators.executor import ExecutionError

    uri = "@fiftyone-hardness/hardness/inject_hardness"
    # FiftyOne refuses to execute a form with an invalid field
    with pytest.raises(ExecutionError, match="outside the directories"):
        foo.get_operator(uri)(
            digits,
            hardness="crop_shift",
            rate=0.05,
            output_dir=str(tmp_path / "escape"),
            name="sec-inj",
            persistent=False,
        )
    assert not os.path.exists(tmp_path / "escape")
    import fiftyone as fo

    assert not fo.dataset_exists("sec-inj")


class _Payload:
    """Unpickling this runs code: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("model", ["efficientnet_lite0", "RN50"])
def test_checkpoints_are_never_unpickled(tmp_path, model):
    import torch

    from fiftyone_hardness.methods.embeddings import load_embedder

    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save({"state_dict": _Payload(str(marker))}, path)
    with pytest.raises(Exception):
        load_embedder(model=model, pretrained=str(path), device="cpu")
    assert not marker.exists()
