"""Action policies, one folder per kind, laid out as lerobot lays out a policy:
configuration, modelling and normaliser apart from the commands that use them."""
