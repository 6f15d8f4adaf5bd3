"""RelayDesk bot: config, transport, channels and the ticket core."""
