"""Counters kept in Redis so they are cluster-wide and right under any pool.

Each counter is one hash field, the JSON array `[name, {label: value, ...}]` with the
labels sorted: any label value (a tenant with `|`, `=`, newlines, unicode) round-trips
and cannot forge another label. The first `max_tenants` distinct tenants get their own
label, later ones count as `other`; an error code (`code` label) outside `ERROR_CODES`
counts as `other` too (codes can come from a provider's JSON). So a scrape stays small
whatever callers and providers send. A per-minute copy of the few counters the
`budget` display needs lives in short-lived hashes.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from importlib import resources

import redis

from budget import InvalidRequest
from budget.resp import decoded

log = logging.getLogger(__name__)

#: Counters also kept per minute, for "in the last minute" displays.
RECENT = frozenset({"deferrals_total", "provider_responses_total", "reservations_total"})
#: Longest tenant accepted at submit (and given its own label by the workers).
MAX_TENANT_LENGTH = 128
#: The label of tenants beyond `max_tenants` (and of any over-long one).
OTHER_TENANT = "other"
#: The error codes with a label of their own: quotaflow's, and the providers' usual ones.
ERROR_CODES = frozenset(
    {
        # quotaflow's (tasks.delivery, tasks.errors)
        "retries_exhausted", "internal_error", "invalid_request", "never_admissible",
        "context_length_exceeded", "unknown_deployment", "model_not_configured", "auth_failed",
        # tasks.provider's classification
        "timeout", "connection_error", "rate_limited", "server_error", "provider_error",
        "authentication_error", "permission_denied", "not_found", "unprocessable_entity",
        # the providers' own codes for permanent failures
        "insufficient_quota", "billing_hard_limit_reached", "billing_not_active",
        "access_terminated", "invalid_api_key", "model_not_found", "content_filter",
        "content_policy_violation", "DeploymentNotFound",
    }
)  # fmt: skip
#: The label of any other error code.
OTHER_CODE = "other"
#: How long a worker trusts that a tenant has its own label before asking Redis again.
_TENANT_CACHE_SECONDS = 60.0
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_tenant(tenant: object) -> None:
    """Refuse a tenant the metrics cannot carry; None means no tenant."""
    if tenant is None:
        return
    if not isinstance(tenant, str):
        raise InvalidRequest(f"tenant must be a string, got {type(tenant).__name__}")
    if len(tenant) > MAX_TENANT_LENGTH:
        raise InvalidRequest(
            f"tenant is {len(tenant)} characters long; at most {MAX_TENANT_LENGTH} are allowed"
        )


def counter_field(name: str, labels: Mapping[str, str]) -> str:
    pair = [name, dict(sorted(labels.items()))]
    return json.dumps(pair, ensure_ascii=False, separators=(",", ":"))


def parse_field(raw: str) -> tuple[str, dict[str, str]]:
    """(name, labels) of a counter field; ValueError for anything `counter_field` did not write."""
    data = json.loads(raw)
    if not isinstance(data, list) or len(data) != 2:
        raise ValueError("not a [name, labels] pair")
    name, labels = data
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError("bad counter name")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and _NAME.match(k) and not k.startswith("__") and isinstance(v, str)
        for k, v in labels.items()
    ):
        raise ValueError("bad labels")
    return name, labels


class Metrics:
    def __init__(
        self, client: redis.Redis, *, key_prefix: str = "quotaflow", max_tenants: int = 100
    ) -> None:
        self.client = client
        self.key = f"{key_prefix}:metrics"
        self.minute_prefix = f"{key_prefix}:metrics:minute:"
        self.tenants_key = f"{key_prefix}:metrics:tenants"
        self.max_tenants = max_tenants
        self._tenant_script = client.register_script(
            resources.files("tasks").joinpath("lua", "tenant.lua").read_text(encoding="utf-8")
        )
        #: Tenants known to have their own label, until when (monotonic).
        self._own_label: dict[str, float] = {}

    def add(self, increments: list[tuple[str, Mapping[str, str], float]]) -> None:
        """Add to several counters in one round trip. Never raises: metrics are best effort."""
        minute = self.minute_prefix + str(int(time.time() // 60))
        increments = [
            (name, {**labels, "code": OTHER_CODE}, amount)
            if "code" in labels and labels["code"] not in ERROR_CODES
            else (name, labels, amount)
            for name, labels, amount in increments
        ]
        try:
            increments = self._bound_tenants(increments)
        except redis.RedisError as exc:
            log.warning("metrics not recorded: %s", exc)
            return
        pipe = self.client.pipeline(transaction=False)
        for name, labels, amount in increments:
            field = counter_field(name, labels)
            if float(amount).is_integer():
                pipe.hincrby(self.key, field, int(amount))
            else:
                pipe.hincrbyfloat(self.key, field, amount)
            if name in RECENT:
                pipe.hincrbyfloat(minute, field, amount)
                pipe.expire(minute, 180)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics not recorded: %s", exc)

    def _bound_tenants(
        self, increments: list[tuple[str, Mapping[str, str], float]]
    ) -> list[tuple[str, Mapping[str, str], float]]:
        tenants = {labels["tenant"] for _, labels, _ in increments if labels.get("tenant")}
        if not tenants:
            return increments
        label = {t: self.tenant_label(t) for t in tenants}
        out: list[tuple[str, Mapping[str, str], float]] = []
        for name, labels, amount in increments:
            tenant = labels.get("tenant")
            out.append((name, {**labels, "tenant": label[tenant]} if tenant else labels, amount))
        return out

    def tenant_label(self, tenant: str) -> str:
        """The tenant's own label while fewer than `max_tenants` have one, else `other`."""
        if len(tenant) > MAX_TENANT_LENGTH:  # sent by a publisher that skipped the check
            return OTHER_TENANT
        now = time.monotonic()
        if self._own_label.get(tenant, 0.0) > now:
            return tenant
        if self._tenant_script(keys=[self.tenants_key], args=[tenant, self.max_tenants]):
            self._own_label[tenant] = now + _TENANT_CACHE_SECONDS
            return tenant
        return OTHER_TENANT

    def read(self) -> dict[str, float]:
        """Every well-formed counter; others are skipped (and logged), never fatal."""
        return _well_formed(self.client.hgetall(self.key).items(), self.key)

    def last_minute(self) -> dict[str, float]:
        """Counters over the current and previous minute buckets (60-120 s of history)."""
        now = int(time.time() // 60)
        out: dict[str, float] = {}
        for m in (now - 1, now):
            key = self.minute_prefix + str(m)
            for k, v in _well_formed(self.client.hgetall(key).items(), key).items():
                out[k] = out.get(k, 0.0) + v
        return out


def _well_formed(items: Iterable[tuple[bytes | str, bytes | str]], key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    bad: list[str] = []
    for raw_field, raw_value in items:
        try:
            field = decoded(raw_field)
            parse_field(field)
            out[field] = float(raw_value)
        except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
            bad.append(repr(raw_field)[:80])
    if bad:
        log.warning("skipped %d malformed metrics fields in %s, e.g. %s", len(bad), key, bad[0])
    return out
