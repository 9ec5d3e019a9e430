"""How well a model forgot and kept (DESIGN.md §4): the metrics as pure functions of answers and numbers
(metrics.py), the model's answers and NLLs that feed them (evaluate.py), and the until-check that measures the
forget set during training (until.py)."""
