"""The integration surface: the REST API under /api/v1 with its OpenAPI
document, API tokens, outbound webhooks, the status hub across other systems,
and the service report.

Kept free of imports here: bot/config.py reads api.config while loading.
"""
