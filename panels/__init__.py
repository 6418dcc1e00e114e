"""
The plugin's App panels. Each panel class is added to :data:`PANELS` (one
line) and its name to ``fiftyone.yml``.
"""
PANELS = []


def register_panels(p):
    """Registers every panel of :data:`PANELS` with plugin ``p``."""
    for panel in PANELS:
        p.register(panel)
