"""`python -m sandbox [--host H] [--port P] [fault options]`: serve the fake NXCloud until SIGTERM/SIGINT.

Runs from the repo root (or the sandbox image's workdir): the sandbox is not part of the nxjobs wheel.
"""

import sys

from sandbox.server import run

sys.exit(run())
