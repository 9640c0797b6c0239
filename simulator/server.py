"""The simulated provider's HTTP server: the ``Simulator`` that decides under one lock,
and the ``http.server`` plumbing that only does I/O.

Routes: ``POST /v1/{chat/completions,embeddings}`` and the Azure paths
``/openai/deployments/{name}/{chat/completions,embeddings}``; ``GET /health``,
``GET /stats``, ``POST /stats/reset`` and ``POST /admin/config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from simulator.answers import chat_body, embeddings_body, refusal
from simulator.calls import Call, Triggers, authorize, check_context, parse_call
from simulator.config import LIMIT_FIELDS, RUNTIME_FIELDS, SimulatorConfig, checked, coerce
from simulator.errors import ApiError, error_body, status_error
from simulator.faults import draw_fault, draw_lengths
from simulator.limits import Limiter, make_limiter, rate_limit_headers
from simulator.stats import Stats

logger = logging.getLogger(__name__)


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


_API_PATH = re.compile(
    r"^(?:/v1|/openai/deployments/(?P<deployment>[^/]+))/(?P<op>chat/completions|embeddings)$"
)


class Simulator:
    """A rate-limited, fault-injecting, OpenAI-compatible server on a background thread.

    ``with Simulator(SimulatorConfig(tpm=60_000)) as sim: ... sim.url ...``
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = checked(config or SimulatorConfig())
        # One lock for the limiter, stats, config and rng: admission is all or nothing.
        self._lock = threading.Lock()
        self._rng = random.Random(self._config.seed)
        self._stats = Stats()
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
            self._stats = Stats()
            self._limiter = self._new_limiter(self._config)
            self._neighbour_due = 0.0

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change fields in ``RUNTIME_FIELDS``; raise ValueError for others or bad values.

        A change of tpm, rpm, policy or check_seconds starts fresh (full) limits.
        """
        unknown = sorted(set(changes) - RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        coerced = {k: coerce(k, v) for k, v in changes.items()}
        with self._lock:
            old, new = self._config, checked(dataclasses.replace(self._config, **coerced))
            if any(getattr(old, k) != getattr(new, k) for k in LIMIT_FIELDS):
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
            return self._api(kind, api["deployment"], target, headers, body)
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
        self,
        kind: str,
        deployment: str | None,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Reply:
        with self._lock:
            self._stats.requests_received += 1
            self._stats.record_request(target, headers)
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
            fault, status = draw_fault(self._rng, config, triggers)
            limit, lengths = draw_lengths(self._rng, call, config)
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
