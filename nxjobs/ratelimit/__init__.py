"""Global rate limiting shared by every worker: GCRA slots and shared cooldowns in Redis."""
