"""Promptgen: new instructions by 8-shot self-instruct with M_t (command -> srlm.prompts)."""
