"""srlm: Self-Rewarding Language Models (Yuan et al. 2024) as gRPC services over Kafka."""

__version__ = "0.1.0"
