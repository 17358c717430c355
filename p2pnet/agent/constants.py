"""Names every agent agrees on: topics, protocols, and the default bootstrap list."""

from __future__ import annotations

#: Join, leave and periodic presence announcements.
ANNOUNCEMENTS_TOPIC = "agent-announcements"
#: Broadcast messages between agents.
MESSAGES_TOPIC = "agent-messages"
#: Health and metrics of nodes.
STATUS_TOPIC = "node-status"
AGENT_TOPICS = (ANNOUNCEMENTS_TOPIC, MESSAGES_TOPIC, STATUS_TOPIC)

#: Direct messages travel on a stream of this protocol (see docs/agents.md for why).
DIRECT_MESSAGE_PROTOCOL = "/p2pnet/agent/message/1.0.0"

#: The regions the public bootstrap nodes will run in, one node each (the original design's
#: four: US East (Virginia), US West (Oregon), EU West (Amsterdam), SEA (Singapore)).
BOOTSTRAP_REGIONS = ("us-east", "us-west", "eu-west", "sea")
#: Where each region is, for people and dashboards.
BOOTSTRAP_REGION_NAMES = {
    "us-east": "US East (Virginia)",
    "us-west": "US West (Oregon)",
    "eu-west": "EU West (Amsterdam)",
    "sea": "SEA (Singapore)",
}

#: Public bootstrap nodes by region: ``{"us-east": "/dns4/<host>/tcp/<port>/p2p/<id>", ...}``.
#:
#: Empty on purpose: no public p2pnet bootstrap node runs yet, and an invented address would
#: only make nodes dial nothing. Fill it when the nodes exist (run each with ``p2pnet bootstrap``
#: as a service, docs/deploy.md, and put the address from its ``ready`` event here), or override
#: per run with ``BOOTSTRAP_PEERS`` (env), ``--bootstrap-peers`` (flag) or
#: ``AgentConfig(bootstrap_peers=[...])``. ``p2pnet devnet`` starts one local bootstrap node
#: per region name on loopback and passes their addresses on.
DEFAULT_BOOTSTRAP_PEERS: dict[str, str] = {}


def default_bootstrap_peers() -> list[str]:
    return [DEFAULT_BOOTSTRAP_PEERS[r] for r in BOOTSTRAP_REGIONS if r in DEFAULT_BOOTSTRAP_PEERS]
