"""/metrics' operators' gauges while the broker is down (docs/metrics.md): a scrape still
answers, at once, leaving out what it cannot read, and has them again once it is back.

A Redis of the test's own (test_outages.py's), never the shared one.
"""

from __future__ import annotations

import httpx
import pytest

from devserver import testing
from taskhub.tests import test_outages

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

own_redis = test_outages.own_redis


def test_a_scrape_during_a_broker_outage_answers_without_the_worker_and_queue_gauges(own_redis):
    web, base_url = testing.start_daphne(extra_env={"REDIS_URL": own_redis.url})
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            scrape = http.get("/metrics")
            assert scrape.status_code == 200
            assert "taskhub_workers_online 0.0" in scrape.text
            assert 'taskhub_queue_depth{queue="celery"} 0.0' in scrape.text
            assert 'taskhub_queue_depth{queue="dispatch"} 0.0' in scrape.text

            own_redis.kill()
            scrape = http.get("/metrics")

            assert scrape.status_code == 200, scrape.text
            assert 'taskhub_metrics_source_up{source="redis"} 0.0' in scrape.text
            assert "taskhub_workers_online " not in scrape.text
            assert "taskhub_queue_depth{" not in scrape.text
            assert 'taskhub_tasks{status="pending"}' in scrape.text

            own_redis.start()
            testing.wait_until(
                lambda: "taskhub_workers_online 0.0" in http.get("/metrics").text,
                timeout=30,
                interval=0.5,
                message="the gauges back after the outage",
            )
        assert "Traceback" not in web.output, web.output[-6000:]
    finally:
        web.stop()
