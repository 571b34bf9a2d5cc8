"""Few-step distillers (OneDP, consistency heads, pi-Flow).

Nothing is implemented here yet: the distillers are scheduled after the trainers and
action policies (see the project's issues). The package exists because the layout is fixed.
"""
