"""lvisctl: long-tailed, large-vocabulary instance segmentation on LVIS.

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a value: with busy-waiting
OpenMP threads torch ran ~15x slower on small, loaded CPU machines. It must happen before torch is
imported, which is why it lives here and not in the CLI.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
