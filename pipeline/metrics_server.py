"""Prometheus metrics, read from Redis at scrape time: `quotaflow metrics --port 9464`.

The counters are the cluster-wide ones the tasks keep in Redis (`tasks.metrics`), so
one endpoint serves the whole cluster whatever the pool or the number of machines.
Queue depth includes what Flower does not count: deferred (ETA) tasks, which sit
unacknowledged in the workers' memory and in the broker's `unacked` hash.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from budget import QuotaflowError
from pipeline.broker import queue_depth
from tasks.metrics import parse_field
from tasks.runtime import Runtime

log = logging.getLogger(__name__)

#: Families the collector makes itself; a counter field must not shadow them.
_OWN_FAMILIES = ("queue_", "budget_")

HELP = {
    "deliveries_total": "Task deliveries, by queue and reason (new, deferral, retry).",
    "reservations_total": "Gate answers to reservations, by outcome.",
    "deferrals_total": "Requests postponed by the budget instead of sent to the provider.",
    "deferral_seconds_total": "Seconds of postponement handed out by the budget.",
    "provider_responses_total": "Provider responses, by HTTP status (or error code).",
    "dead_letters_total": "Requests that failed permanently, by error code.",
    "tokens_estimated_total": "Tokens charged to the budget at admission.",
    "tokens_prompt_total": "Prompt tokens reported by the provider.",
    "tokens_completion_total": "Completion tokens reported by the provider.",
    "cost_usd_total": "Cost of the actual usage, USD.",
    "requests_done_total": "Requests completed successfully.",
}


class QuotaflowCollector(Collector):  # type: ignore[misc]
    """Reads counters, queue depth and budget state from Redis on every scrape."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        # A scrape never fails: a part that cannot be read is left out and logged.
        up = GaugeMetricFamily("quotaflow_up", "1 when Redis answered this scrape.")
        families: list[Metric] = []
        ok = True
        for part in (self._counters, self._queues, self._budget):
            try:
                families.extend(part())
            except (redis.RedisError, QuotaflowError) as exc:
                log.warning("metrics scrape: Redis unreachable: %s", exc)
                ok = False
                break
            except Exception:
                log.exception("metrics scrape: %s left out", part.__name__)
        up.add_metric([], 1 if ok else 0)
        yield up
        if ok:
            yield from families

    def _counters(self) -> Iterator[Metric]:
        series: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        for raw, value in self.rt.metrics.read().items():  # well-formed fields only
            name, labels = parse_field(raw)
            if name == "up" or name.startswith(_OWN_FAMILIES):
                log.warning("metrics scrape: counter %r collides with a gauge; skipped", name)
                continue
            # Distinct fields can spell the same series (a hand-written field): add them.
            points = series[name]
            key = tuple(sorted(labels.items()))
            points[key] = points.get(key, 0.0) + value
        for name, points in sorted(series.items()):
            keys = sorted({k for pairs in points for k, _ in pairs})
            help_text = HELP.get(name, f"quotaflow counter {name}.")
            family: Any
            if name.endswith("_total"):
                family = CounterMetricFamily(f"quotaflow_{name}", help_text, labels=keys)
            else:
                family = GaugeMetricFamily(f"quotaflow_{name}", help_text, labels=keys)
            for pairs, value in points.items():
                found = dict(pairs)
                family.add_metric([found.get(k, "") for k in keys], value)
            yield family

    def _queues(self) -> Iterator[Metric]:
        rt = self.rt
        depth = queue_depth(rt.redis, rt.settings)
        for metric, doc, values in (
            ("quotaflow_queue_length", "Messages waiting in the queue (LLEN).", depth.ready),
            (
                "quotaflow_queue_deferred",
                "Deferred (ETA) tasks held by workers; Flower does not count these.",
                depth.deferred,
            ),
            (
                "quotaflow_queue_unacked",
                "Delivered, unacknowledged messages: deferred, running or prefetched.",
                depth.unacked,
            ),
        ):
            gauge = GaugeMetricFamily(metric, doc, labels=["queue"])
            for queue, n in values.items():
                gauge.add_metric([queue], n)
            yield gauge

    def _budget(self) -> Iterator[Metric]:
        rt = self.rt
        gauges = {
            "tokens_available": "Tokens the gate could admit now.",
            "tokens_capacity": "The gate's burst capacity in tokens.",
            "requests_available": "Requests the gate could admit now.",
            "requests_capacity": "The gate's burst capacity in requests.",
            "booked_ahead_seconds": "Seconds of quota already booked beyond the burst.",
            "cooldown_seconds": "Seconds left of a provider 429 cooldown.",
            "rate_factor": "Share of the token rate the gate allows now (after 429s, "
            "and minus the neighbours' learned share).",
            "request_rate_factor": "Share of the request rate the gate allows now.",
            "neighbour_tpm": "Tokens per minute that other clients on the key are learned to use.",
            "neighbour_rpm": "Requests per minute other clients on the key are learned to use.",
            "effective_tpm": "Tokens per minute the gate admits now.",
            "effective_rpm": "Requests per minute the gate admits now.",
        }
        budget = {
            k: GaugeMetricFamily(f"quotaflow_budget_{k}", doc, labels=["deployment"])
            for k, doc in gauges.items()
        }
        for dep in rt.settings.deployments:
            snap = rt.gate.snapshot(dep.name)
            for k, gauge in budget.items():
                gauge.add_metric([dep.name], getattr(snap, k))
        yield from budget.values()


def registry_for(rt: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QuotaflowCollector(rt))
    return registry


def serve(rt: Runtime, *, host: str = "127.0.0.1", port: int = 9464) -> Any:
    """Serve /metrics in a background thread; returns the server (call `.shutdown()`)."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry_for(rt))
    except OSError as exc:
        raise QuotaflowError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick another --port"
        ) from exc
    return server
