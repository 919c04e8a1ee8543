"""The at-most-once attempt protocol, outside Celery.

An attempt takes its rate-limit slot, claims its record (or batch), guards its
request with the in-flight marker, sends, classifies the answer, records it, and
returns a decision (`decisions.py`) that a Celery task turns into a retry, a
failure or its return value:

- job.py: one job's attempt (`JobAttempt`);
- batch.py: one flush of coalesced jobs (`BatchAttempt`), senders.py: what differs per kind;
- marker.py: the in-flight marker; policy.py: when and how soon to go back to the queue;
- report.py: the one log line and metrics of an attempt.

Nothing here imports tasks/, workers/ or config/: services and settings arrive as arguments.
"""
