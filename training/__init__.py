"""Training for IntroLLM: supervised warm start, joint GRPO by coordinate
ascent (token policy and temperature policy in turns), and evaluation against
fixed and heuristic temperatures. Uses `model/`; knows nothing of serving."""
