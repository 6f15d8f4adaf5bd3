"""What the IM adapters share: cached access tokens, the platform APIs' HTTP client, bounded caches, the outbound stream connection, verification helpers."""
