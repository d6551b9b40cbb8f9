"""Judge: LLM-as-a-Judge scores of every candidate and the preference pairs
(srlm.candidates -> srlm.judgments + srlm.pairs); Score over gRPC."""
