"""
Shared pytest setup: an isolated FiftyOne database for the whole test session
(real MongoDB started by FiftyOne, never a mock), and small real datasets.
"""

import os
import uuid

# Must be set before fiftyone is imported anywhere.
# Tests delete every dataset they see, so they only ever run in a database of
# their own: a user's FIFTYONE_DATABASE_NAME is replaced unless it already
# names a test database.
TEST_DB_PREFIX = "fiftyone_hardness_tests_"
if not os.environ.get("FIFTYONE_DATABASE_NAME", "").startswith(TEST_DB_PREFIX):
    os.environ["FIFTYONE_DATABASE_NAME"] = (
        TEST_DB_PREFIX + uuid.uuid4().hex[:8]
    )
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..",
    "shared",
    "data",
)


@pytest.fixture(scope="session", autouse=True)
def _drop_test_database():
    yield
    import fiftyone as fo
    import fiftyone.core.odm as foo

    if not fo.config.database_name.startswith(TEST_DB_PREFIX):
        raise RuntimeError(
            "refusing to clean up database %r: not a test database"
            % fo.config.database_name
        )
    for name in fo.list_datasets():
        fo.delete_dataset(name)
    try:
        foo.get_db_conn().client.drop_database(fo.config.database_name)
    except Exception:  # pragma: no cover - best effort cleanup
        pass


@pytest.fixture(scope="session")
def digits_dataset():
    """The built-in demo dataset: 1797 sklearn digit images, 20% symmetric
    label noise (seed 0), pixel vectors in ``pixels``. Read-only for tests:
    clone it before writing."""
    from fiftyone_hardness import demo

    return demo.load_digits_dataset(
        name="hardness-test-digits",
        noise_rate=0.2,
        noise_kind="symmetric",
        seed=0,
        overwrite=True,
    )


@pytest.fixture
def digits(digits_dataset):
    """A fresh clone of the digits demo dataset, deleted afterwards."""
    dataset = digits_dataset.clone()
    yield dataset
    dataset.delete()


def auroc(truth, scores):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(np.asarray(truth, bool), np.asarray(scores, float))


@pytest.fixture(scope="session")
def digits_embedded(digits_dataset):
    """A copy of the digits dataset with offline-backbone embeddings in
    ``embeddings`` (64 px inputs), computed once per session. A copy, so
    that the ``digits`` clones of other tests never see a field they did
    not make (tests would otherwise depend on their order)."""
    import fiftyone_hardness as foh

    dataset = digits_dataset.clone("hardness-test-digits-embedded")
    foh.compute_embeddings(
        dataset, embeddings_field="embeddings", image_size=64
    )
    return dataset


@pytest.fixture
def plugins_dir(tmp_path):
    """FiftyOne's plugins dir pointed at a folder holding this repository
    (as a user installs the plugin), restored afterwards."""
    import fiftyone as fo

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    os.symlink(repo, plugins / "fiftyone-hardness")
    old = fo.config.plugins_dir
    fo.config.plugins_dir = str(plugins)
    yield str(plugins)
    fo.config.plugins_dir = old
