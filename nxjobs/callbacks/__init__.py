"""NXCloud webhooks: verify, parse, correlate to job records, reconcile the missing ones.

Modules: verify (pure checks on the raw request), events (pydantic payloads ->
normalised events with their correlation keys), ledger (the Redis side: one Lua
script applies a callback), applier (many callbacks per Redis call), app (the
receiver's logic), http (its HTTP server), reconcile (query APIs for jobs whose
callbacks never came). No Celery and no `config` here.
"""
