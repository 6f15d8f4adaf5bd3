"""The API's operation table; the modules under api/ add their operations to it."""
from api.spec import Api

API = Api(
    title="RelayDesk API",
    version="1",
    description="Service tickets for other systems: create, follow and act on tickets, report their "
                "states in other systems, receive signed webhooks. Every call needs Authorization: Bearer "
                "<token> (python run_bot.py api-token create --name SYSTEM --scopes ...). Errors are "
                "application/problem+json with a stable type.",
)
