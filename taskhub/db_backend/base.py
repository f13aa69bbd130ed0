"""django-prometheus's PostgreSQL backend (the django_db_* metrics, docs/metrics.md), with
its cursor class built once per process instead of on every connect.

django-prometheus's get_connection_params() calls ExportingCursorWrapper(), a class
factory, each time Django connects; with the connection pool that is every request (a
pool checkout is a connect() to Django), and the class it builds is thrown away (the pool
made its connections with the first one). Building a class costs about 0.5 ms of CPU
(py-spy: 8.6 % of Daphne's CPU per REST create, docs/benchmarks.md, "REST create: where
the time went (this round)"). The metrics are the same: the cached class counts the same
queries with the same labels.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.db.backends.base.base import NO_DB_ALIAS
from django_prometheus.db.backends.postgresql import base as prometheus_base
from django_prometheus.db.common import ExportingCursorWrapper


@cache
def _exporting_cursor(cursor_class: type, alias: str, vendor: str) -> type:
    return ExportingCursorWrapper(cursor_class, alias, vendor)


class DatabaseWrapper(prometheus_base.DatabaseWrapper):
    @property
    def pool(self) -> Any:
        """Django's pool, made with taskhub.db_pool's check: Django passes psycopg_pool's
        own check_connection when CONN_HEALTH_CHECKS is on, and offers no setting for
        another. The rest is as Django makes it; Django's property returns it from here on
        (and makes the pool itself in every other case)."""
        options = self.settings_dict["OPTIONS"].get("pool")
        if (
            options
            and self.alias != NO_DB_ALIAS
            and self.alias not in self._connection_pools
            and self.settings_dict["CONN_HEALTH_CHECKS"]
            and not self.settings_dict.get("CONN_MAX_AGE")  # Django refuses that one
        ):
            from psycopg_pool import ConnectionPool

            from taskhub.db_pool import check_connection_then_the_idle_ones

            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django's: it sets its own later
            pool = ConnectionPool(
                kwargs=connect_kwargs,
                open=False,
                configure=self._configure_connection,
                check=lambda connection: check_connection_then_the_idle_ones(pool, connection),
                **({} if options is True else options),
            )
            self._connection_pools.setdefault(self.alias, pool)
        return super().pool

    def get_connection_params(self) -> dict[str, Any]:
        # Django's own parameters (skipping django-prometheus's override), then its wrapper.
        conn_params = super(prometheus_base.DatabaseWrapper, self).get_connection_params()
        conn_params["cursor_factory"] = _exporting_cursor(
            conn_params["cursor_factory"], self.alias, self.vendor
        )
        return conn_params
