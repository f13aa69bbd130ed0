"""The quick form of `make reliability` (docs/reliability.md): each scenario against real
processes, asserting correctness only (nothing lost, nothing twice, nothing stuck, the
documented codes), never speed. One test per scenario, so a failure names its scenario."""

from __future__ import annotations

import pytest

from conftest import clear_connection_registry, drop_pending_messages
from reliability import scenarios

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _clean_redis():
    drop_pending_messages()
    clear_connection_registry()


@pytest.mark.parametrize("name", sorted(scenarios.QUICK))
def test_quick_scenario_meets_its_targets(name):
    result = scenarios.QUICK[name]()

    print(f"{result.scenario}: {result.measured}")
    assert result.failures == [], result.measured
