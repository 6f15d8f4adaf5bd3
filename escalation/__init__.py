"""Escalation: policies per priority, durable timers, on-call shifts, phone calls."""
