"""HTTP client for the NXCloud APIs: signing, transport, error classification.

Knows nothing of Celery or Redis (except the token cache, which takes a redis
client as an argument).
"""
