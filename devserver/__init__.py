"""Development tooling: the launcher behind `make run`/`make test`/`make bench`, the embedded
PostgreSQL and Valkey, the test-process helpers, the nginx config writer and Chromium flags.

Never imported by an app (taskhub/tests/test_architecture.py checks it); the Docker image
does not need it. docs/architecture.md, "Development tooling".
"""
