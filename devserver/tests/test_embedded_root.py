"""As root, `make run` lets PostgreSQL run as its own user; it changes the machine beyond
.data/ only after saying what it will change (docs/running.md)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from devserver import embedded


def test_the_plan_lists_each_change_and_makes_none(tmp_path):
    closed = tmp_path / "home"  # a checkout under a 0700 home, like /root
    data_dir = closed / "checkout" / ".data"
    bin_dir = closed / "checkout" / ".venv" / "pginstall" / "bin"
    data_dir.mkdir(parents=True)
    bin_dir.mkdir(parents=True)
    (bin_dir / "postgres").write_text("#!/bin/sh\n")
    (bin_dir / "postgres").chmod(0o700)
    closed.chmod(0o700)
    before = {p: p.stat().st_mode for p in [closed, bin_dir / "postgres"]}

    plan = embedded.root_setup_plan(data_dir, bin_dir, user="taskhub-no-such-user")
    described = [change.description for change in plan]

    assert described[0].startswith("add system user 'taskhub-no-such-user' (useradd --system")
    reach = "so taskhub-no-such-user can reach its data directory"
    assert f"chmod o+x {closed} (now drwx------) {reach}" in described
    assert any(d.startswith(f"make 1 entries under {bin_dir.parent} readable") for d in described)
    assert not any(str(data_dir.parent) in d and "chmod" in d for d in described)  # o+x already
    assert {p: p.stat().st_mode for p in before} == before  # planning changed nothing


def test_every_change_is_said_before_any_is_made(tmp_path, caplog):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    said_when_applied: list[bool] = []

    def first() -> None:
        said_when_applied.append("second thing" in caplog.text)

    plan = [
        embedded.HostChange("first thing", first),
        embedded.HostChange("second thing", lambda: closed.chmod(0o701)),
    ]
    with caplog.at_level(logging.INFO, logger=embedded.log.name):
        embedded.apply_root_setup(plan, user="someone")

    assert said_when_applied == [True]
    assert stat.S_IMODE(closed.stat().st_mode) == 0o701
    assert "running as root" in caplog.text and "system user 'someone'" in caplog.text


def test_nothing_is_said_when_nothing_needs_changing(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=embedded.log.name):
        embedded.apply_root_setup([])
    assert caplog.text == ""


def test_an_open_tree_needs_no_chmod(tmp_path):
    bin_dir = tmp_path / "open" / "bin"
    bin_dir.mkdir(parents=True)
    (tmp_path / "open" / "data").mkdir()
    Path(tmp_path / "open").chmod(0o755)
    plan = embedded.root_setup_plan(tmp_path / "open" / "data", bin_dir, user="root")
    assert not [c for c in plan if str(tmp_path / "open") in c.description]
