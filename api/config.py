"""Configuration of the integration surface.

    [api]                       # the REST API under /api/v1: limits
    [webhooks]                  # outbound webhooks: timeout, private addresses
    [status_hub]                # conflicts between systems, window, quality group
    [integrations.<system>]     # one external system: its states -> RelayDesk's

The classes follow bot/config.py: unknown keys are errors, durations carry units.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator

from bot.config_types import Duration, Section as _Section
from bot.core import states as st


class ApiConfig(_Section):
    # Larger request bodies are answered 413 (the server's own cap is [server] max_body_bytes).
    max_body_bytes: int = Field(default=65_536, gt=0)
    # Per token: a bucket of `burst` requests refilled at `rate_per_second`; beyond it 429.
    rate_per_second: float = Field(default=20.0, gt=0)
    burst: int = Field(default=40, ge=1)
    page_size: int = Field(default=50, ge=1, le=500)
    # POST /tickets/{number}/photos: the largest picture taken (decoded bytes), and
    # where pictures are kept (default: <data dir>/api-media), named by their content.
    max_photo_bytes: int = Field(default=5_242_880, gt=0)
    photo_dir: Optional[Path] = None
    # A TTF or OTF with Chinese glyphs for the service report PDF (default: Noto
    # Sans CJK SC, the font the managers' charts use; see reports/fonts.py).
    report_font: Optional[Path] = None

    @field_validator("report_font")
    @classmethod
    def _font_exists(cls, path):
        if path is not None and not path.is_file():
            raise ValueError(f"file not found: {path}")
        return path


class WebhooksConfig(_Section):
    # A receiver's 2xx within this time counts as delivered.
    timeout: Duration = timedelta(seconds=5)
    # Loopback, private and link-local addresses are refused unless this is true (SSRF).
    allow_private: bool = False


class StatusHubConfig(_Section):
    # Two systems reporting states that map to these pairs within `window` freeze the ticket.
    conflicts: list[tuple[str, str]] = Field(default_factory=lambda: [(st.RESOLVED, st.REOPENED)])
    window: Duration = timedelta(minutes=15)
    # The consistency view lists tickets whose systems lag RelayDesk by more than this.
    lag: Duration = timedelta(minutes=5)
    # Who hears of a freeze, per channel (default: the ticket's team groups).
    quality_groups: dict[str, str] = Field(default_factory=dict)

    @field_validator("conflicts")
    @classmethod
    def _known_states(cls, pairs):
        for pair in pairs:
            for state in pair:
                if state not in st.ALL:
                    raise ValueError(f"unknown state {state!r} (one of {', '.join(st.ALL)})")
        return pairs


class IntegrationConfig(_Section):
    """One external system, e.g. [integrations.crm] states = { Closed = "resolved" }."""

    states: dict[str, str] = Field(default_factory=dict)

    @field_validator("states")
    @classmethod
    def _known_states(cls, states):
        for external, ours in states.items():
            if ours not in st.ALL:
                raise ValueError(f"{external}: unknown state {ours!r} (one of {', '.join(st.ALL)})")
        return states
