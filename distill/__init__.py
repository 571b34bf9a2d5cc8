"""Few-step distillers: a method's loss, its per-step updates and the constants its student samples with.

`genrl distill` (genrl/commands/distill.py) runs them on the shared training loop. Built so far:
consistency distillation (consistency.py). OneDP and pi-Flow follow (see the project's issues).
"""
