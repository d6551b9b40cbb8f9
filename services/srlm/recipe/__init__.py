"""The self-rewarding recipe as pure functions (no Kafka, no gRPC, no model calls).

- :mod:`.ids`: deterministic prompt / candidate / pair ids
- :mod:`.selfinstruct`: the 8-shot prompt for new instructions and reading one back
- :mod:`.filters`: ROUGE-L, length, keyword and duplicate filters for new instructions
- :mod:`.judge`: the paper's LLM-as-a-Judge prompt and score parsing
- :mod:`.pairs`: preference pairs from judged candidates
- :mod:`.seed`: seed IFT/EFT data (OpenAssistant format, AlpacaEval)
- :mod:`.evalsets`: held-out evaluation prompts and IFEval's checker
"""
