"""The API's rate limits (REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES): DRF's rule, one Redis
round trip per request.

DRF's SimpleRateThrottle keeps each client's request times as one pickled list in the
cache: every request GETs the whole list and SETs it back, two round trips carrying up to
N floats each (6,000 at the default user rate, so the cost grew with the rate). The rule
here is the same sliding log: a request is refused when N requests were allowed within
the last `duration` seconds; a refused request is not recorded; the 429 says how long to
wait (DRF's own message and Retry-After, DRF's own estimate). The log is a Redis sorted
set (score = request time) that one Lua script trims, counts and appends to atomically.

A Redis failure lets the request through (one log line per outage, taskhub/outages.py):
a rate limit must not turn a Redis blip into an API outage; the cached reads degrade the
same way (tasks/cache.py).
"""

from __future__ import annotations

import logging
import secrets
from functools import cache
from typing import Any

import redis
from django.core.cache import cache as django_cache
from django_redis import get_redis_connection
from rest_framework import throttling
from rest_framework.request import Request
from rest_framework.settings import api_settings

from taskhub.outages import REDIS, is_redis_outage

logger = logging.getLogger(__name__)

# KEYS[1] the log; ARGV: now, duration (s), limit, a unique member for this request.
# Returns {1, 0, ""} when allowed, {0, count, oldest time} when refused. Times are sent
# back as strings: Redis would truncate a Lua number to an integer.
_SLIDING_LOG = """
local now = tonumber(ARGV[1])
local duration = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - duration)
local count = redis.call('ZCARD', KEYS[1])
if count < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(duration * 1000))
  return {1, 0, ''}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, count, oldest[2]}
"""


@cache
def _script() -> Any:
    # redis-py sends EVALSHA and falls back to EVAL once per server (a Redis restart
    # forgets scripts); its connection pool reconnects after a fork.
    return get_redis_connection("default").register_script(_SLIDING_LOG)


class OneRoundTripThrottle(throttling.SimpleRateThrottle):
    @property
    def THROTTLE_RATES(self) -> dict[str, str]:  # DRF reads this name
        # Read per request, not frozen at import as DRF's class attribute is, so a
        # changed REST_FRAMEWORK setting (override_settings in a test) takes effect.
        return api_settings.DEFAULT_THROTTLE_RATES

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        try:
            allowed, count, oldest = _script()(
                keys=[f"{django_cache.make_key(self.key)}:log"],
                args=[repr(self.now), self.duration, self.num_requests, secrets.token_hex(8)],
            )
        except (redis.RedisError, OSError) as exc:
            if is_redis_outage(exc):
                REDIS.failed(exc, "rate limits are not checked")
            else:
                logger.warning("rate limit %s not checked", self.key, exc_info=True)
            return True
        REDIS.recovered()
        if allowed:
            return True
        # What DRF's wait() reads: the log's length and its oldest entry (history[-1]).
        self.history = [float(oldest)] * int(count)
        return self.throttle_failure()


class AnonRateThrottle(OneRoundTripThrottle, throttling.AnonRateThrottle):
    """Per client address, for requests without credentials."""


class UserRateThrottle(OneRoundTripThrottle, throttling.UserRateThrottle):
    """Per user once authenticated (per address before)."""
