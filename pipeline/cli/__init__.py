"""`quotaflow`: run batches locally, drive a cluster, watch the budget, serve metrics.

`main` is the console script; each command lives with its kind (`batch`, `cluster`,
`simulated`), what they share in `options`.
"""

from pipeline.cli.main import cli, main

__all__ = ["cli", "main"]
