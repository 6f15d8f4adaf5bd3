"""Neutral cards: one model, built by the core, rendered per channel."""
from cards.model import Button, Card, CardField, TimelineStep

__all__ = ["Button", "Card", "CardField", "TimelineStep"]
