"""Sampler: N candidate responses per prompt (srlm.prompts -> srlm.candidates); Sample/Generate over gRPC."""
