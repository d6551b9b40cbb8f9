"""Generated protobuf and gRPC code of protos/srlm/v1 (``python protos/generate.py``). Do not edit."""
