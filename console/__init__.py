"""Read-only web pages served by the bot, reachable only through signed links:
the managers' console (`看板`) and a customer's tracking page of one ticket."""
