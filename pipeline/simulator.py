"""An OpenAI-compatible HTTP server that rate-limits like a real provider.

Used by the demo, the integration tests and the benchmarks. It serves
``/v1/chat/completions``, ``/v1/embeddings`` and the Azure paths
``/openai/deployments/{name}/{chat/completions,embeddings}``; charges each request at
arrival as the providers do (prompt characters / 4 + the output limit x ``n``);
enforces TPM and RPM with an OpenAI- or Azure-style policy (see ``sim_limits``);
answers 429 with ``retry-after``/``retry-after-ms``; adds latency and faults; and
counts what it did at ``GET /stats``.

Message text may carry triggers for tests: ``[[status:NNN]]`` (with ``[[code:X]]``
and, for 429, ``[[retry_after:S]]``), ``[[latency:S]]``, ``[[drop]]`` and
``[[timeout]]``.

Standard library only, and nothing from quotaflow's other packages: it stands in for
the provider, so it must not share the gate's assumptions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import random
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.sim_limits import (
    POLICIES,
    ApiError,
    Call,
    Limiter,
    Triggers,
    authorize,
    chat_body,
    check_context,
    embeddings_body,
    error_body,
    make_limiter,
    parse_call,
    rate_limit_headers,
    refusal,
    status_error,
)

logger = logging.getLogger(__name__)

#: Admissions kept in ``stats()["admissions"]``; older ones are dropped.
MAX_ADMISSIONS = 200_000


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated provider limits, delays and fails requests."""

    #: Interface to bind; loopback unless told otherwise.
    host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one (read it back from ``Simulator.url``).
    port: int = 0
    #: Tokens per minute.
    tpm: int = 30_000
    #: Requests per minute.
    rpm: int = 600
    #: "openai" (buckets holding a minute of quota), "azure" (minute counters plus
    #: token and request periods) or "ptu" (Azure provisioned throughput: utilization).
    policy: str = "openai"
    #: Azure policy: length of the token periods (TPM x check_seconds / 60 each).
    check_seconds: float = 10.0
    #: Azure policy: length of the request periods (RPM x request_check_seconds / 60 each).
    request_check_seconds: float = 1.0
    #: Azure policy: seconds between the start of the minute (and of every period) and
    #: the moment the limits are built or reset; None draws it at random each time.
    phase_seconds: float | None = None
    #: OpenAI policy: seconds of quota the buckets hold (60 = a full minute, as
    #: OpenAI does; less makes a provider that runs out sooner, for short tests).
    #: PTU policy: seconds of the provisioned rate that make 100% utilization.
    bucket_seconds: float = 60.0
    #: Base latency of an admitted request.
    latency_ms: float = 150.0
    #: Extra latency drawn uniformly from 0..latency_jitter_ms.
    latency_jitter_ms: float = 100.0
    #: Extra latency per completion token (generation time).
    output_token_ms: float = 0.0
    #: Fraction of admitted requests answered 500 or 503.
    fail_5xx_rate: float = 0.0
    #: Fraction of admitted requests that hang, then get a 504 the client gave up on.
    timeout_rate: float = 0.0
    #: How long a timed-out request hangs before its 504.
    timeout_hang_seconds: float = 30.0
    #: Fraction of admitted requests whose connection is closed with no response.
    drop_rate: float = 0.0
    #: Another tenant's tokens per minute, charged against the same limits.
    neighbour_tpm: int = 0
    #: When set, required as "Authorization: Bearer <key>" or "api-key: <key>".
    api_key: str | None = None
    #: Largest prompt + output limit a chat request may ask for.
    context_window: int = 128_000
    #: Output limit charged when a chat request sets neither max_tokens nor max_completion_tokens.
    default_max_tokens: int = 4096
    #: Model (or Azure deployment) names answered 404 model_not_found.
    fail_models: frozenset[str] = frozenset()
    #: Seed for fault, latency and completion-length draws; None for a random one.
    seed: int | None = None


#: Fields that ``Simulator.configure`` and ``POST /admin/config`` may change.
RUNTIME_FIELDS = frozenset(
    {
        "tpm", "rpm", "policy", "check_seconds", "request_check_seconds", "phase_seconds",
        "bucket_seconds", "latency_ms",
        "latency_jitter_ms",
        "output_token_ms", "fail_5xx_rate", "timeout_rate", "timeout_hang_seconds",
        "drop_rate", "neighbour_tpm", "fail_models", "api_key",
    }
)  # fmt: skip
_LIMIT_FIELDS = (
    "tpm", "rpm", "policy", "check_seconds", "request_check_seconds", "phase_seconds",
    "bucket_seconds",
)  # fmt: skip
_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(SimulatorConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Check a JSON-ish value against the field's type; ints may stand for floats."""
    kind = _FIELD_TYPES[name]
    if kind == "frozenset[str]":
        if isinstance(value, list | tuple | set | frozenset) and all(
            isinstance(v, str) for v in value
        ):
            return frozenset(value)
        raise ValueError(f"{name} must be a list of strings")
    base, _, none = kind.partition(" | ")
    if value is None and none:
        return None
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[base]
    if not ok:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return float(value) if base == "float" else value


def _checked(config: SimulatorConfig) -> SimulatorConfig:
    """Return ``config`` if its values make sense, else raise ValueError."""
    c = config
    problems = [
        (c.policy not in POLICIES, f"policy must be one of {POLICIES}"),
        (c.tpm < 1 or c.rpm < 1, "tpm and rpm must be >= 1"),
        (not 0 < c.check_seconds <= 60, "check_seconds must be in (0, 60]"),
        (not 0 < c.request_check_seconds <= 60, "request_check_seconds must be in (0, 60]"),
        (
            c.phase_seconds is not None and not 0 <= c.phase_seconds < 60,
            "phase_seconds must be in [0, 60)",
        ),
        (not 0 < c.bucket_seconds <= 60, "bucket_seconds must be in (0, 60]"),
        (min(c.latency_ms, c.latency_jitter_ms, c.output_token_ms) < 0, "latencies must be >= 0"),
        (c.timeout_hang_seconds < 0 or c.neighbour_tpm < 0, "negative hang or neighbour_tpm"),
        (not 0 <= c.port <= 65535, "port must be in 0..65535"),
        (c.context_window < 1 or c.default_max_tokens < 1, "token limits must be >= 1"),
    ]
    rates = (c.fail_5xx_rate, c.timeout_rate, c.drop_rate)
    problems.append((min(rates) < 0 or sum(rates) > 1, "fault rates must be >= 0, sum <= 1"))
    for bad, message in problems:
        if bad:
            raise ValueError(message)
    return config


@dataclass
class _Reply:
    """What the HTTP layer should do: wait ``delay`` seconds, then answer or drop."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    #: Run when the call completes (after the delay), e.g. to correct a PTU charge.
    on_done: Callable[[], None] | None = None


@dataclass
class _Stats:
    requests_received: int = 0
    admitted: int = 0
    refused_429: int = 0
    #: 429s by the dimension that refused ("tokens" or "requests").
    refused_by: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    faults: dict[str, int] = field(default_factory=lambda: {"5xx": 0, "timeout": 0, "drop": 0})
    tokens_charged: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    neighbour_tokens: int = 0
    first_admitted_at: float | None = None
    last_admitted_at: float | None = None
    admissions: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=MAX_ADMISSIONS)
    )

    def record_admission(self, charge: int) -> None:
        now = time.time()
        self.admitted += 1
        self.tokens_charged += charge
        self.admissions.append((now, charge))
        self.first_admitted_at = self.first_admitted_at or now
        self.last_admitted_at = now

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["faults"] = dict(self.faults)
        data["by_status"] = {str(k): v for k, v in sorted(self.by_status.items())}
        data["refused_by"] = dict(self.refused_by)
        data["admissions"] = list(self.admissions)
        return data


_API_PATH = re.compile(
    r"^(?:/v1|/openai/deployments/(?P<deployment>[^/]+))/(?P<op>chat/completions|embeddings)$"
)


class Simulator:
    """A rate-limited, fault-injecting, OpenAI-compatible server on a background thread.

    ``with Simulator(SimulatorConfig(tpm=60_000)) as sim: ... sim.url ...``
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = _checked(config or SimulatorConfig())
        # One lock for the limiter, stats, config and rng: admission is all or nothing.
        self._lock = threading.Lock()
        self._rng = random.Random(self._config.seed)
        self._stats = _Stats()
        self._phase = 0.0
        self._limiter = self._new_limiter(self._config)
        self._neighbour_due = 0.0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind and serve in background threads; return self."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = _Server((self._config.host, self._config.port), self)
        with self._lock:  # align windows and buckets to the moment we start serving
            self._limiter = self._new_limiter(self._config)
        # A short poll interval keeps stop() quick; it costs one wakeup per 50 ms.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
        for target, name in ((serve, "serve"), (self._neighbour, "neighbour")):
            thread = threading.Thread(target=target, name=f"simulator-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("simulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and wake hanging requests."""
        server, self._server = self._server, None
        self._stopping.set()
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> Simulator:
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:PORT" (append "/v1" for the OpenAI client)."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def config(self) -> SimulatorConfig:
        """The configuration in force."""
        return self._config

    # -- control -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts since start or the last reset (the body of ``GET /stats``)."""
        with self._lock:
            data = self._stats.as_dict()
            data["phase_seconds"] = self._phase
        data["admissions"] = [list(a) for a in data["admissions"]]  # outside the lock: slow
        return data

    def reset(self) -> None:
        """Zero the stats and refill the limits."""
        with self._lock:
            self._stats = _Stats()
            self._limiter = self._new_limiter(self._config)
            self._neighbour_due = 0.0

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change fields in ``RUNTIME_FIELDS``; raise ValueError for others or bad values.

        A change of tpm, rpm, policy or check_seconds starts fresh (full) limits.
        """
        unknown = sorted(set(changes) - RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        coerced = {k: _coerce(k, v) for k, v in changes.items()}
        with self._lock:
            old, new = self._config, _checked(dataclasses.replace(self._config, **coerced))
            if any(getattr(old, k) != getattr(new, k) for k in _LIMIT_FIELDS):
                self._limiter = self._new_limiter(new)
            self._config = new
        logger.info("simulator reconfigured: %s", sorted(coerced))
        return new

    # -- internals -----------------------------------------------------------------

    def _new_limiter(self, config: SimulatorConfig) -> Limiter:
        """Fresh limits; Azure's periods began `phase` seconds ago (random unless set).
        Called with the lock held, or before the server starts."""
        phase = config.phase_seconds
        self._phase = self._rng.uniform(0.0, 60.0) if phase is None else phase
        return make_limiter(
            config.policy,
            tpm=config.tpm,
            rpm=config.rpm,
            check_seconds=config.check_seconds,
            request_check_seconds=config.request_check_seconds,
            bucket_seconds=config.bucket_seconds,
            phase=self._phase,
            now=time.monotonic(),
        )

    def _neighbour(self) -> None:
        """Charge the other tenant's share; what does not fit is retried, up to a minute's worth."""
        last = time.monotonic()
        while not self._stopping.wait(0.1):
            now = time.monotonic()
            with self._lock:
                tpm = self._config.neighbour_tpm
                due = min(self._neighbour_due + tpm / 60.0 * (now - last), float(tpm))
                taken = self._limiter.take(int(due), now) if due >= 1 else 0
                self._neighbour_due = due - taken
                self._stats.neighbour_tokens += taken
            last = now

    def _dispatch(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> _Reply:
        path = unquote(urlsplit(target).path).rstrip("/") or "/"
        api = _API_PATH.match(path)
        if api and method == "POST":
            kind = "chat" if api["op"] == "chat/completions" else "embeddings"
            return self._api(kind, api["deployment"], headers, body)
        if (method, path) == ("GET", "/health"):
            return _Reply(200, {"ok": True})
        if (method, path) == ("GET", "/stats"):
            return _Reply(200, self.stats())
        if (method, path) == ("POST", "/stats/reset"):
            self.reset()
            return _Reply(200, {"ok": True})
        if (method, path) == ("POST", "/admin/config"):
            return self._admin(body)
        if api or path in ("/health", "/stats", "/stats/reset", "/admin/config"):
            return _Reply(405, error_body(f"Method {method} not allowed.", "invalid_request_error"))
        return _Reply(404, error_body(f"Unknown path {path}.", "invalid_request_error"))

    def _admin(self, body: bytes) -> _Reply:
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            config = self.configure(**changes)
        except (ValueError, UnicodeDecodeError) as exc:
            return _Reply(400, error_body(str(exc), "invalid_request_error"))
        view = dataclasses.asdict(config)
        view["fail_models"] = sorted(config.fail_models)
        view["api_key"] = None if config.api_key is None else "***"
        return _Reply(200, view)

    def _api(
        self, kind: str, deployment: str | None, headers: Mapping[str, str], body: bytes
    ) -> _Reply:
        with self._lock:
            self._stats.requests_received += 1
            config = self._config
        try:
            authorize(config.api_key, headers)
            call = parse_call(kind, deployment, body, config.default_max_tokens)
            triggers = Triggers.scan(call.text)
            if call.model in config.fail_models:
                raise status_error(404, call.model)
            if triggers.status is not None and triggers.status < 500:
                raise status_error(
                    triggers.status,
                    call.model,
                    code=triggers.code,
                    retry_after=triggers.retry_after,
                )
            check_context(call, config.context_window)
        except ApiError as exc:
            with self._lock:
                self._stats.by_status[exc.status] += 1
                snap = self._limiter.snapshot(time.monotonic())
            return _Reply(exc.status, exc.body, rate_limit_headers(snap) | exc.headers)
        return self._admit(call, triggers)

    def _admit(self, call: Call, triggers: Triggers) -> _Reply:
        """Charge at arrival, like the providers; faults strike only admitted calls."""
        with self._lock:
            config, stats = self._config, self._stats
            verdict = self._limiter.admit(call.charge, 1, time.monotonic())
            headers = rate_limit_headers(verdict.snapshot)
            if not verdict.admitted:
                stats.refused_429 += 1
                stats.refused_by[verdict.dimension or "tokens"] += 1
                stats.by_status[429] += 1
                refused = refusal(call, verdict)
                return _Reply(429, refused.body, headers | refused.headers)
            stats.record_admission(call.charge)
            fault, status = self._draw_fault(config, triggers)
            limit, lengths = self._draw_lengths(call, config)
            delay_ms = config.latency_ms + self._rng.uniform(0.0, config.latency_jitter_ms)
            delay_ms += config.output_token_ms * max(lengths, default=0)
            if fault:
                stats.faults[fault] += 1
            if status:
                stats.by_status[status] += 1
            if status == 200:
                stats.prompt_tokens += call.prompt_tokens
                stats.completion_tokens += sum(lengths)
        delay = delay_ms / 1000.0 if triggers.latency is None else triggers.latency
        headers["x-request-id"] = f"req_{uuid.uuid4().hex}"
        # Utilization-based limits count actual usage once the call completes.
        used = call.prompt_tokens + sum(lengths) if status == 200 else 0
        done = functools.partial(self._completed, used - call.charge)
        if fault == "drop":
            return _Reply(0, drop=True, on_done=done)
        if fault == "timeout":
            delay = config.timeout_hang_seconds
        if status != 200:
            error = status_error(status, call.model).body
            return _Reply(status, error, headers, delay, on_done=done)
        body = chat_body(call, lengths, limit) if call.kind == "chat" else embeddings_body(call)
        return _Reply(200, body, headers, delay, on_done=done)

    def _completed(self, correction: int) -> None:
        with self._lock:
            self._limiter.correct(correction, time.monotonic())

    def _draw_fault(self, config: SimulatorConfig, triggers: Triggers) -> tuple[str | None, int]:
        """Pick the fault ("5xx", "timeout", "drop" or None) and the status (0 for a drop)."""
        fault = triggers.fault or ("5xx" if triggers.status is not None else None)
        if fault is None:
            draw = self._rng.random()
            for name, rate in (
                ("5xx", config.fail_5xx_rate),
                ("timeout", config.timeout_rate),
                ("drop", config.drop_rate),
            ):
                if draw < rate:
                    fault = name
                    break
                draw -= rate
        if fault == "5xx":
            return fault, triggers.status or self._rng.choice((500, 503))
        return fault, {"timeout": 504, "drop": 0}.get(fault or "", 200)

    def _draw_lengths(self, call: Call, config: SimulatorConfig) -> tuple[int, list[int]]:
        """The output limit and, per choice, a completion length in 30-100% of it."""
        if call.kind != "chat":
            return 0, []
        limit = call.output_limit
        if not call.explicit_limit:  # the provider never generates past the context
            limit = min(limit, config.context_window - call.prompt_tokens)
        low = max(1, math.ceil(0.3 * limit))
        return limit, [self._rng.randint(low, limit) for _ in range(call.n)]


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; the Simulator decides, this class only does I/O."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    timeout = 300  # idle keep-alive connections; longer than clients' pool expiry
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        simulator = self.server.simulator
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True  # we cannot find the end of this body
            self._write(
                _Reply(411, error_body("Content-Length required.", "invalid_request_error"))
            )
            return
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = simulator._dispatch(method, self.path, headers, body)
        if reply.delay > 0:
            simulator._stopping.wait(reply.delay)  # stop() wakes hanging requests
        if reply.on_done is not None:
            reply.on_done()
        if reply.drop or simulator._stopping.is_set():
            self.close_connection = True  # closed with no response, like a dropped connection
            return
        self._write(reply)

    def _write(self, reply: _Reply) -> None:
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # listen backlog for bursts of new connections

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (timeouts, drops) are normal here, not worth a traceback.
        logger.debug("connection from %s failed", client_address, exc_info=True)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _parser(
    prog: str | None = None, host: str | None = None, port: int | None = None
) -> argparse.ArgumentParser:
    d = SimulatorConfig()
    p = argparse.ArgumentParser(
        prog=prog or "python -m pipeline.simulator",
        description="OpenAI-compatible server that rate-limits like a real provider.",
    )
    add = p.add_argument
    add("--host", default=host or d.host, help="interface to bind (default %(default)s)")
    add(
        "--port",
        type=_port,
        default=d.port if port is None else port,
        help="port; 0 picks a free one (default %(default)s)",
    )
    add("--tpm", type=int, default=d.tpm, help="tokens per minute (default %(default)s)")
    add("--rpm", type=int, default=d.rpm, help="requests per minute (default %(default)s)")
    add("--policy", choices=POLICIES, default=d.policy, help="limit model (default %(default)s)")
    add("--check-seconds", type=float, default=d.check_seconds, help="azure token period")
    add("--request-check-seconds", type=float, default=d.request_check_seconds,
        help="azure request period")  # fmt: skip
    add(
        "--phase-seconds",
        type=float,
        default=d.phase_seconds,
        help="azure: seconds since the periods began at start/reset (default: random)",
    )
    add("--bucket-seconds", type=float, default=d.bucket_seconds, help="openai bucket size")
    add("--latency-ms", type=float, default=d.latency_ms, help="base latency")
    add("--latency-jitter-ms", type=float, default=d.latency_jitter_ms, help="extra 0..N ms")
    add("--output-token-ms", type=float, default=d.output_token_ms, help="ms per output token")
    add("--fail-5xx-rate", type=float, default=d.fail_5xx_rate, help="fraction answered 5xx")
    add("--timeout-rate", type=float, default=d.timeout_rate, help="fraction that hang")
    add("--timeout-hang-seconds", type=float, default=d.timeout_hang_seconds, help="hang length")
    add("--drop-rate", type=float, default=d.drop_rate, help="fraction of dropped connections")
    add("--neighbour-tpm", type=int, default=d.neighbour_tpm, help="other tenant's tokens/min")
    add("--api-key", default=d.api_key, help="require this key (default: no auth)")
    add("--context-window", type=int, default=d.context_window, help="max prompt + output")
    add("--default-max-tokens", type=int, default=d.default_max_tokens, help="charged if unset")
    add(
        "--fail-models",
        type=lambda s: frozenset(m for m in s.split(",") if m),
        default=d.fail_models,
        help="comma-separated model names answered 404",
    )
    add("--seed", type=int, default=d.seed, help="seed for faults, latency and lengths")
    add("--log-level", default="WARNING", help="logging level (default %(default)s)")
    return p


def main(
    argv: list[str] | None = None,
    *,
    prog: str | None = None,
    host: str | None = None,
    port: int | None = None,
) -> int:
    """Run the simulator until SIGINT or SIGTERM; print one line once listening.

    `prog`, `host` and `port` set the usage line and the defaults of --host and --port.
    """
    parser = _parser(prog, host, port)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = _checked(
            SimulatorConfig(
                **{f.name: getattr(args, f.name) for f in dataclasses.fields(SimulatorConfig)}
            )
        )
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Simulator(config) as sim:
            print(f"quotaflow simulator listening on {sim.url}", flush=True)
            while not stop.wait(1.0):
                pass
    except OSError as exc:
        logger.error("simulator could not serve: %s", exc)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
