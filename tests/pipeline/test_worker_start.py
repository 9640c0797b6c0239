"""What a worker process prepares before its first task."""

from __future__ import annotations

import os

from celery import signals
from support.cluster import cluster_settings

from pipeline import app
from pipeline.app import configure
from tasks import provider


def test_edge_provider_clients_are_built_before_the_first_task(redis_server, simulator) -> None:  # type: ignore[no-untyped-def]
    # N13: the pre-build read settings from app.conf, where nothing puts them: the first
    # call of each pool process built its client between its slot and the provider.
    sim = simulator()
    settings = cluster_settings(redis_server.url, sim)
    configure(app, settings)
    provider._clients.clear()
    signals.worker_process_init.send(sender=None)
    built = {name for pid, name in provider._clients if pid == os.getpid()}
    assert built == {d.name for d in settings.deployments}
