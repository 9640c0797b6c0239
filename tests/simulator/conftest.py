"""Simulators started per test, fast and seeded unless told otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.sim_client import FAST, StartSim

from simulator import Simulator, SimulatorConfig


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Start simulators with ``SimulatorConfig`` overrides (fast by default); stop them after."""
    started: list[Simulator] = []

    def start(**overrides: Any) -> Simulator:
        sim = Simulator(SimulatorConfig(**(FAST | {"seed": 7} | overrides))).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(start_sim: StartSim) -> Simulator:
    return start_sim(tpm=1_000_000, rpm=100_000)
