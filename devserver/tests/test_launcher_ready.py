"""`make run` says "started" only once its front takes connections (devserver/launcher.py,
cmd_run): a client that takes the line at its word must not be refused."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from devserver.launcher import Child, LaunchError, Signals, loopback_of, wait_until_listening


def _child(args: list[str]) -> Child:
    proc = subprocess.Popen(args)
    return Child("web", proc, threading.Thread())


def test_the_wait_ends_once_the_port_takes_connections():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        wait_until_listening("127.0.0.1", port, [], Signals())  # returns: nothing to assert


def test_a_front_that_dies_before_it_listens_is_a_launch_error_naming_it():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connects are refused
        child = _child([sys.executable, "-c", "raise SystemExit(3)"])
        child.proc.wait(timeout=30)
        with pytest.raises(LaunchError, match="web exited"):
            wait_until_listening("127.0.0.1", port, [child], Signals())


def test_a_wildcard_listen_address_is_reached_on_loopback():
    assert loopback_of("0.0.0.0") == "127.0.0.1"
    assert loopback_of("::") == "::1"
    assert loopback_of("192.0.2.7") == "192.0.2.7"
