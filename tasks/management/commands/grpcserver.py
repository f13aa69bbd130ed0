"""`python manage.py grpcserver`: serve the gRPC TaskService until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from tasks.grpc.server import SERVICE_NAME, create_server


class Command(BaseCommand):
    help = (
        "Serve the gRPC TaskService (proto/taskhub.proto) with health checking and server "
        "reflection, until SIGTERM or SIGINT."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--port", type=int, default=None, help="Port (default: GRPC_PORT, 50051; 0: any)."
        )
        parser.add_argument(
            "--host",
            default=None,
            help="Address to bind (default: GRPC_HOST, else HOST, else 127.0.0.1).",
        )
        parser.add_argument(
            "--max-workers",
            type=int,
            default=None,
            help="Threads serving calls (default: GRPC_MAX_WORKERS).",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=10.0,
            help="Seconds in-flight calls get to finish on shutdown (default: 10).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port = settings.TASKHUB_GRPC_PORT if options["port"] is None else options["port"]
        host = settings.TASKHUB_GRPC_HOST if options["host"] is None else options["host"]
        try:
            grpc_server = create_server(port=port, host=host, max_workers=options["max_workers"])
        except (RuntimeError, ValueError) as exc:
            raise CommandError(f"gRPC server not started: {exc}") from exc

        stop = threading.Event()

        def request_stop(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

        grpc_server.start()
        self.stdout.write(
            f"gRPC {SERVICE_NAME} listening on {host}:{grpc_server.port} "
            f"({grpc_server.max_workers} threads)"
        )
        self.stdout.flush()
        # A timed wait keeps the main thread returning to the interpreter, where the
        # signal handlers run.
        while not stop.wait(0.5):
            pass

        self.stdout.write(f"gRPC server stopping (grace {options['grace']} s)")
        self.stdout.flush()
        grpc_server.stop(options["grace"])
        connections.close_all()
        self.stdout.write("gRPC server stopped")
        self.stdout.flush()
