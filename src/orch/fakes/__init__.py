"""Fakes of the servers orch talks to that cannot run here (Plane, Gitea, Telegram), shipped
with orch for its tests and its demo. Each listens on 127.0.0.1 over real HTTP, checks every
request against the provider's published specification (a request the spec does not allow is
answered as the provider would and remembered as a violation), and can inject the provider's
real faults (orch.fakes.faults)."""
