# Generated from proto/taskhub.proto by grpc_tools.protoc; see docs/grpc.md. Do not edit.
