"""What the IM adapters share: cached access tokens and the outbound stream connection."""
