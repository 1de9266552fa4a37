"""The MQTT uplink: the session that publishes the outbox, and the router of messages that come down.

`session` holds the connection (reconnect loop, `…/state` online/offline, PUBACK-acknowledged
publishing from the outbox, subscriptions); `router` holds the registrations of the parts that
listen to inbound topics and runs their handlers apart from the session. Other code imports from
here, not from the modules:

    uplink = Uplink(config.uplink, outbox, prefix, client_id)
    uplink.router.register("diag/req", on_diag_request)                 # under the prefix
    uplink.router.register("edge/update/stable", on_update, absolute=True)
    async with uplink:
        ...
"""

from agent.uplink.router import (
    DEFAULT_HANDLER_TIMEOUT,
    DEFAULT_MAX_INBOUND_BYTES,
    Handler,
    InboundCounters,
    InboundMessage,
    InboundRouter,
    RouterError,
)
from agent.uplink.session import (
    RETAINED_KINDS,
    TOPICS,
    Uplink,
    UplinkError,
    UplinkState,
    describe_failure,
    tls_context,
    topic_for,
    try_session,
)

__all__ = [
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_MAX_INBOUND_BYTES",
    "RETAINED_KINDS",
    "TOPICS",
    "Handler",
    "InboundCounters",
    "InboundMessage",
    "InboundRouter",
    "RouterError",
    "Uplink",
    "UplinkError",
    "UplinkState",
    "describe_failure",
    "tls_context",
    "topic_for",
    "try_session",
]
