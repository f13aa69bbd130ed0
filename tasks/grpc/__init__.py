"""The gRPC TaskService (proto/taskhub.proto): a thin adapter over tasks.services and
tasks.selectors, served by `manage.py grpcserver`. See docs/grpc.md."""
