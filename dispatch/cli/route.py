"""``dispatch route simulate FROM TO``: which rule and relay would take this mail, and why."""

from __future__ import annotations

import json

from dispatch.config import Settings
from dispatch.delivery.routing import Router


def simulate(settings: Settings, sender: str, recipient: str, as_json: bool) -> int:
    decision = Router(settings.routes, settings.default_relay).route(sender, recipient)
    if as_json:
        print(
            json.dumps(
                {
                    "from": sender,
                    "to": recipient,
                    "relays": list(decision.relays),
                    "rule": decision.rule_index,
                    "explanation": decision.explain(),
                }
            )
        )
    else:
        print(f"<{sender}> → <{recipient}>: {decision.explain()}")
    return 0
