"""Every HTTP response names the instance that served it (docs/scaling.md)."""

from __future__ import annotations

import os
import socket

import pytest


@pytest.mark.django_db
def test_every_response_names_the_instance_that_served_it(client, settings):
    settings.TASKHUB_INSTANCE_NAME = "web2"

    assert client.get("/healthz")["X-TaskHub-Server"] == "web2"
    assert client.get("/no/such/page")["X-TaskHub-Server"] == "web2"


@pytest.mark.django_db
def test_without_a_name_a_development_instance_is_host_and_pid(client, settings):
    settings.TASKHUB_INSTANCE_NAME = ""
    settings.DEBUG = True

    assert client.get("/healthz")["X-TaskHub-Server"] == f"{socket.gethostname()}:{os.getpid()}"


@pytest.mark.django_db
def test_without_a_name_production_does_not_tell_its_host_and_pid(client, settings):
    settings.TASKHUB_INSTANCE_NAME = ""
    settings.DEBUG = False

    assert "X-TaskHub-Server" not in client.get("/healthz")
