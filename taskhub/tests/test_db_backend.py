"""The database backend (taskhub/db_backend) counts queries as django-prometheus's does,
with one cursor class per process instead of a new one on every connect."""

from __future__ import annotations

import pytest
from django.db import connection
from django_prometheus.db import execute_total

pytestmark = pytest.mark.django_db


def test_every_connect_gets_the_same_counting_cursor_class():
    first = connection.get_connection_params()["cursor_factory"]
    second = connection.get_connection_params()["cursor_factory"]

    assert first is second
    assert first.__qualname__.endswith("ExportingCursorWrapper.<locals>.CursorWrapper")


def test_a_query_is_counted_with_the_databases_labels():
    counter = execute_total.labels(connection.alias, connection.vendor)
    before = counter._value.get()

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")

    assert counter._value.get() == before + 1
