"""Simulators started per test: fast, seeded and keyless unless told otherwise."""

from __future__ import annotations

from typing import Any

import pytest
from support.sim_client import FAST, StartSim

from simulator import Simulator


@pytest.fixture
def start_sim(simulator: StartSim) -> StartSim:
    """Start simulators with ``SimulatorConfig`` overrides; the root fixture stops them."""

    def start(**overrides: Any) -> Simulator:
        return simulator(**(FAST | {"seed": 7, "api_key": None} | overrides))

    return start


@pytest.fixture
def sim(start_sim: StartSim) -> Simulator:
    return start_sim(tpm=1_000_000, rpm=100_000)
