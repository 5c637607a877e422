"""The Open Inference Protocol's gRPC definition: its proto, and the descriptor set
compiled from it (``make proto``) that :mod:`mnistops.serve.grpc_api` loads."""
