"""Sampling a model and scoring it: images against rewards, policies over seeded episodes."""
