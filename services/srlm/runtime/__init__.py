"""Process plumbing shared by the services: gRPC server, metrics, the served model."""
