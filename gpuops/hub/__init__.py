"""The hub (CONTRACTS.md §5): intake, the durable outbox, routing, auth and dispatch to Prefect."""
