"""The packed reserve is sent once: a reply lost after Redis ran it is not resent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import redis

from budget import BudgetUnavailable, Gate
from settings import DeploymentSettings


class ReplyDroppingProxy:
    """A TCP proxy to Redis that forwards everything, except that the reply to the
    first script call (EVALSHA) that Redis runs is never delivered: the connection
    is closed instead, as when a reply is lost after the script ran."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    return
                upstream.sendall(data)
                reply = upstream.recv(65536)
                if b"EVALSHA" in data and not reply.startswith(b"-NOSCRIPT"):
                    with self._lock:
                        drop = self.dropped == 0
                        self.dropped += drop
                    if drop:
                        return  # ran in Redis; the caller never hears of it
                client.sendall(reply)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(redis_server, redis_client) -> Iterator[ReplyDroppingProxy]:  # type: ignore[no-untyped-def]
    url = urlparse(redis_server.url)
    p = ReplyDroppingProxy(url.hostname or "127.0.0.1", url.port or 6379)
    yield p
    p.close()


def test_edge_a_reserve_whose_reply_is_lost_is_not_sent_again(
    proxy: ReplyDroppingProxy, redis_client: redis.Redis
) -> None:
    # N21: resending a reserve after a lost reply charged the bucket twice.
    dep = DeploymentSettings(
        name="d1", model="gpt-4o-mini", tpm=60_000, rpm=600, burst_seconds=10.0
    )
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=2)
    gate = Gate(client, [dep], horizon_seconds=30.0, admission_log=True)
    with pytest.raises(BudgetUnavailable):
        gate.reserve("d1", tokens=5_000, reservation_id="r1")
    assert proxy.dropped == 1
    # Redis ran it once, and only once: the log holds one admission of r1.
    direct = Gate(redis_client, [dep], horizon_seconds=30.0, admission_log=True)
    assert [a.reservation_id for a in direct.admissions("d1")] == ["r1"]
    # The connection that lost its reply is not reused out of step.
    assert gate.reserve("d1", tokens=100, reservation_id="r2").reservation is not None
    client.close()
