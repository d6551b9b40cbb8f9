"""Tiny training sets for the real-model tests: short, so a step takes seconds on two cores."""

SFT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                  {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}], "example_id": f"ift-{i}"}
    for i in range(3)
] + [
    # EFT: the judge prompt as the user turn, the rationale and score as the answer.
    {"prompt": [{"role": "user", "content": "Review the response to 'Say hi' and score it out of 5.\n"
                                            "Response: Hello!"}],
     "completion": [{"role": "assistant", "content": "The response greets the user directly.\nScore: 4"}],
     "example_id": "eft-0"},
]

PAIRS = [
    {"pair_id": f"p{i}", "prompt": f"Name color number {i} of the rainbow.",
     "chosen": f"Color number {i} of the rainbow is {color}.", "rejected": "I do not know any colors."}
    for i, color in enumerate(["red", "orange", "yellow", "green"])
]
