"""nxjobs: enqueue NXCloud jobs from application code; read their records back.

This is the only package applications import. It never imports the service
packages (config, tasks, workers).
"""

__version__ = "0.1.0"
