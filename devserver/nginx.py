"""The nginx that `WEB_INSTANCES=N make run` puts in front of N Daphne processes.

The proxy rules are deploy/nginx/proxy.conf, the same file docker-compose's nginx
includes; this module only writes the parts that differ on one machine (the listen
address, the upstream list of 127.0.0.1 ports, paths under the data dir) into
<data>/nginx/nginx.conf. docs/scaling.md has the picture.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import resource
import shutil
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROXY_RULES = PROJECT_DIR / "deploy" / "nginx" / "proxy.conf"
INSTALL_HINT = (
    "nginx is needed for WEB_INSTANCES > 1: install it with `sudo apt-get install nginx` "
    "(Debian/Ubuntu; the service itself need not run) or put its binary on PATH"
)


def find_binary() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def worker_user_directive() -> str:
    """As root, nginx hands its workers to an unprivileged user. Its built-in default group
    (`nobody`) does not exist on Debian, so name one that does. The workers read and write
    no files (bodies stay in memory), so no permission under the data dir has to change."""
    if os.geteuid() != 0:
        return ""
    # www-data: the account Debian's nginx package makes for its workers, not shared with
    # other daemons as `nobody` is.
    for user, group in (("www-data", "www-data"), ("nobody", "nogroup"), ("nobody", "nobody")):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            grp.getgrnam(group)
            return f"user {user} {group};\n"
    return ""


def render(*, listen_host: str, listen_port: int, backends: list[int], run_dir: Path) -> str:
    """nginx.conf for one machine: `backends` are the Daphne ports on 127.0.0.1."""
    listen = f"[{listen_host}]" if ":" in listen_host else listen_host
    # max_fails=0: never mark an instance down. On loopback a dead instance refuses a
    # connection in microseconds and nginx goes straight to the next one, while a marked
    # one stays out for fail_timeout even after it is back; in a rolling restart that left
    # "no live upstreams" (502) for a moment although one instance was serving.
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=0;" for port in backends)
    temp = run_dir / "tmp"
    user = worker_user_directive()
    # As many files as this process may open, up to 65,536 (nginx sizes its connection
    # table from worker_connections up front: a million would cost hundreds of MB).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    files = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    return f"""# Written by devserver.launcher for WEB_INSTANCES={len(backends)}, at every start.
# The proxy rules: {PROXY_RULES} (docker-compose uses it too).
{user}daemon off;
master_process on;
worker_processes 1;
pid {run_dir / "nginx.pid"};
error_log stderr warn;

# Two files per proxied WebSocket (the client's and the upstream's).
worker_rlimit_nofile {files};
events {{
    worker_connections {files // 2};
}}

http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};

    upstream taskhub_web {{
        least_conn;
{servers}
    }}

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        listen {listen}:{listen_port};
        include {PROXY_RULES};
    }}
}}
"""


def write_config(
    *, listen_host: str, listen_port: int, backends: list[int], data_dir: Path
) -> Path:
    run_dir = data_dir / "nginx"
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    path = run_dir / "nginx.conf"
    path.write_text(
        render(listen_host=listen_host, listen_port=listen_port, backends=backends, run_dir=run_dir)
    )
    return path


def command(binary: str, config: Path) -> list[str]:
    # -p: the prefix for relative paths, under the data dir; -e: errors to the launcher's
    # console from the first line on (before the config's error_log is read).
    return [binary, "-p", str(config.parent), "-e", "stderr", "-c", str(config)]
