"""
The peak resident set of this process, for the speed scripts that measure
one case per fresh process: :func:`reset_peak` before the measured step,
:func:`peak_mb` after it (Linux: ``VmHWM`` and ``/proc/self/clear_refs``).
"""


def reset_peak():
    """Resets the peak resident set to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mb():
    """The peak resident set since the last :func:`reset_peak`, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024.0
    return float("nan")
