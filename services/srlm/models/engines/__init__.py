"""Generation engines behind one interface; ``create_engine(cfg.engine)`` picks one."""

from srlm.models.engines.base import (
    Completion,
    Conversation,
    GenerationEngine,
    GenerationResult,
    SamplingParams,
    create_engine,
    in_groups,
)

__all__ = ["Completion", "Conversation", "GenerationEngine", "GenerationResult", "SamplingParams", "create_engine",
           "in_groups"]
