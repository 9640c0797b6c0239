"""The benchmarks' Redis is quotaflow's own launcher (`pipeline.redis_server`).

This name stays for `bench.strategies` until the benchmarks are split by concern.
"""

from __future__ import annotations

from pipeline.redis_server import RedisServer as RedisProcess

__all__ = ["RedisProcess"]
