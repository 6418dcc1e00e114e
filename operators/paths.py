"""
Filesystem paths typed into App forms: only inside directories the
deployment allows.

Operators run on the App's server, which in a shared deployment serves many
users; a path typed into a form must not let one of them write, read or
unpickle anything the server can reach. Paths from the App are therefore
resolved (``..`` and symlinks followed) and must lie inside an allowed
directory:

- the directories listed in the environment variable
  ``FIFTYONE_HARDNESS_ALLOWED_DIRS`` (separated by ``os.pathsep``), set by
  whoever runs the App server, or by default
- FiftyOne's own dataset directory (``fo.config.default_dataset_dir``) and
  model zoo directory (``fo.config.model_zoo_dir``).

Python callers are not restricted: they pass paths to the API directly.
"""

import os

import fiftyone as fo

from fiftyone_hardness.methods.base import HardnessError

ENV_VAR = "FIFTYONE_HARDNESS_ALLOWED_DIRS"


def allowed_dirs():
    """Returns the resolved directories App paths must lie in."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        dirs = [d for d in configured.split(os.pathsep) if d.strip()]
    else:
        dirs = [fo.config.default_dataset_dir, fo.config.model_zoo_dir]
    return [os.path.realpath(os.path.expanduser(d)) for d in dirs if d]


def app_path(path, what):
    """Resolves a path typed into an App form.

    Args:
        path: the path as typed
        what: what it is for, for the message (e.g. "the report folder")

    Returns:
        the resolved absolute path

    Raises:
        HardnessError: the path resolves outside every allowed directory
    """
    resolved = os.path.realpath(os.path.expanduser(str(path)))
    for root in allowed_dirs():
        if resolved == root or resolved.startswith(root + os.sep):
            return resolved
    raise HardnessError(
        "%s %r resolves to %s, outside the directories this App allows "
        "(%s); choose a path inside them, or ask whoever runs the App to "
        "add a directory to %s"
        % (
            what.capitalize(),
            path,
            resolved,
            ", ".join(allowed_dirs()),
            ENV_VAR,
        )
    )


def path_error(path, what):
    """Returns the message of :func:`app_path` for ``path``, or None when
    it is allowed (for marking a form field invalid)."""
    if not path:
        return None
    try:
        app_path(path, what)
    except HardnessError as e:
        return str(e)
    return None
