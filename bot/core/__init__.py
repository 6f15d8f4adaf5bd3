"""The ticket core: numbers, states, commands and notifications.

Nothing in here imports a platform: channels hand it neutral events and
receive neutral cards and texts through the outbox.
"""
