"""
The plugin's App panels. Each panel class is added to :data:`PANELS` (one
line) and its name to ``fiftyone.yml``.
"""

from fiftyone_hardness.panels.hardness_panel import HardnessPanel

PANELS = [
    HardnessPanel,
]


def register_panels(p):
    """Registers every panel of :data:`PANELS` with plugin ``p``."""
    for panel in PANELS:
        p.register(panel)
