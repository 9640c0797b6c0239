"""The derived visibility timeout covers what a worker may hold a message for."""

from __future__ import annotations

import pytest

from settings import Settings, SettingsError, load_settings


def test_edge_the_visibility_timeout_covers_hold_run_and_margin() -> None:
    # N7: derived as 2 x max(countdown, run), 740 s with the defaults, it left 10 s
    # over a deferral held for the longest countdown that then runs for the longest
    # time; clock skew and a wait for a pool slot ate that.
    s = Settings(redis_url="redis://127.0.0.1:6379/0")
    hold_and_run = s.longest_countdown_seconds + s.task_time_limit_seconds
    skew_and_queueing = 10 + max(d.timeout_seconds for d in s.deployments)
    assert s.visibility_timeout >= hold_and_run + skew_and_queueing


def test_a_visibility_timeout_below_hold_run_and_margin_is_refused() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(redis_url="redis://127.0.0.1:6379/0", visibility_timeout_seconds=740)
    assert "must be at least 800" in str(err.value)
    assert load_settings(visibility_timeout_seconds=800).visibility_timeout == 800
