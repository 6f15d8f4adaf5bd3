"""What the IM adapters share: cached access tokens, bounded caches, the outbound stream connection, verification helpers."""
