"""
Progress reporting with FiftyOne's conventions.

Every long call takes ``progress``: ``True`` (a progress bar), ``False`` (no
bar), ``None`` (FiftyOne's default, ``fo.config.show_progress_bars``) or a
callable ``(fraction, message)``, as FiftyOne brain methods do. Methods only
ever see a callable.
"""

import contextlib

import fiftyone as fo

from fiftyone_hardness.methods.base import HardnessError, no_progress


@contextlib.contextmanager
def progress_callback(progress, description):
    """Yields a ``(fraction, message)`` callable for ``progress``.

    Args:
        progress: ``True``, ``False``, ``None`` or a callable
        description: the bar's label

    Raises:
        HardnessError: any other value
    """
    if callable(progress):
        yield progress
        return
    if progress is None:
        progress = fo.config.show_progress_bars
    if not isinstance(progress, bool):
        raise HardnessError(
            "Invalid progress=%r: expected True, False, None or a callable "
            "(fraction, message)" % (progress,)
        )
    if not progress:
        yield no_progress
        return

    from tqdm.auto import tqdm

    bar = tqdm(total=100, desc=description, unit="%", leave=False)

    def report(fraction, message=""):
        target = int(round(100 * min(max(fraction, 0.0), 1.0)))
        if target > bar.n:
            bar.update(target - bar.n)
        if message:
            bar.set_postfix_str(message, refresh=False)

    try:
        yield report
    finally:
        bar.close()
