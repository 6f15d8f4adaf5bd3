"""Prometheus metrics, one registry per app so tests and processes stay apart."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.inbound = Counter("relaydesk_inbound_events_total", "Inbound events by platform and result",
                               ["platform", "result"], registry=r)
        self.callback_seconds = Histogram(
            "relaydesk_callback_seconds", "Time to answer a platform callback", ["platform"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.tickets_created = Counter("relaydesk_tickets_created_total", "Tickets created", ["priority"],
                                       registry=r)
        self.ticket_actions = Counter("relaydesk_ticket_actions_total", "Ticket commands carried out",
                                      ["action"], registry=r)
        self.inbox_failed = Counter("relaydesk_inbox_failed_total",
                                    "Accepted inbound events that could not be applied", ["platform"], registry=r)
        self.refusals = Counter("relaydesk_refusals_total", "Commands refused", ["reason"], registry=r)
        self.outbox_sent = Counter("relaydesk_outbox_sent_total", "Outbound messages delivered", ["channel"],
                                   registry=r)
        self.outbox_retries = Counter("relaydesk_outbox_retries_total", "Outbound sends that will be retried",
                                      ["channel"], registry=r)
        self.outbox_failed = Counter("relaydesk_outbox_failed_total", "Outbound messages given up on",
                                     ["channel"], registry=r)
        self.outbox_pending = Gauge("relaydesk_outbox_pending", "Outbound messages not yet delivered",
                                    registry=r)
        self.outbox_failed_rows = Gauge("relaydesk_outbox_undeliverable", "Outbound messages given up on, still in the outbox",
                                        registry=r)

        self.channel_up = Gauge("relaydesk_channel_up", "1 while a channel's API answers, 0 while marked down",
                                ["channel"], registry=r)
        self.inbox_dead = Gauge("relaydesk_inbox_dead_letters", "Accepted inbound events parked after their last "
                                "attempt (python run_bot.py inbox list)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
