"""The Celery app, job submission and results, the CLI, the simulator and metrics.

`celery -A pipeline worker` finds the app here.
"""

from pipeline.app import app

__all__ = ["app"]
