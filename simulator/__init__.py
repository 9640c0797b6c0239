"""An OpenAI-compatible HTTP server that rate-limits like a real provider.

Used by the demo, the integration tests and the benchmarks. It serves
``/v1/chat/completions``, ``/v1/embeddings`` and the Azure paths
``/openai/deployments/{name}/{chat/completions,embeddings}``; charges each request at
arrival as the providers do (prompt characters / 4 + the output limit x ``n``);
enforces TPM and RPM with an OpenAI- or Azure-style policy (``limits``); answers 429
with ``retry-after``/``retry-after-ms``; adds latency and faults (``faults``); and counts
what it did at ``GET /stats`` (``stats``), with the path and headers of the last
100 API requests (keys masked) for tests to check what a client sent.

Message text may carry triggers for tests: ``[[status:NNN]]`` (with ``[[code:X]]``
and, for 429, ``[[retry_after:S]]``), ``[[latency:S]]``, ``[[drop]]`` and
``[[timeout]]``.

Standard library only, and nothing from quotaflow's packages: it stands in for the
provider, so it must not share the gate's assumptions.

    from simulator import Simulator, SimulatorConfig
    with Simulator(SimulatorConfig(tpm=60_000)) as sim: ...   # sim.url

or ``python -m simulator --help`` (``quotaflow simulate`` wraps it).
"""

from simulator.cli import main
from simulator.config import RUNTIME_FIELDS, SimulatorConfig
from simulator.server import Simulator

__all__ = ["RUNTIME_FIELDS", "Simulator", "SimulatorConfig", "main"]
