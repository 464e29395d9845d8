"""Many servers, the Kubernetes clusters they host, one plan (docs/fleet.md)."""

DEFAULT_BUDGET_S = 5.0  # seconds the placement may search for a better layout (fleet plan --time-budget)
