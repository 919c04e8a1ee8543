"""`python -m sandbox [--host H] [--port P] [fault options]`: the fake NXCloud until SIGTERM/SIGINT.

Run from the repo root (or the sandbox image's workdir): it is not part of the nxjobs wheel.
"""

import sys

from sandbox.server import run

sys.exit(run())
