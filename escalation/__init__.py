"""Escalation: policies per priority, durable timers, on-call shifts, phone calls.

`bot.config` imports `escalation.config` part-way through (its Config holds the
escalation sections), and `escalation.config` builds on `bot.config`'s Duration.
Importing `bot.config` first, here, makes either import order work.
"""
import bot.config  # noqa: F401  (import order: see the docstring)
