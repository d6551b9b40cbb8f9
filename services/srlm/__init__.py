"""srlm: Self-Rewarding Language Models (Yuan et al. 2024) as gRPC services over Kafka."""

import os

# OpenMP threads that spin while waiting make torch on CPU 10-25x slower when the cores are
# shared (several services, or a trainer, on one machine): measured 3.2 s (passive) vs 78 s
# (spinning) for one generation on 2 busy cores. Passive waiting costs little when the cores
# are free. libgomp reads this once, when torch loads it, so it is set before anything in
# srlm imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
