"""Process entry points: the Celery app, the worker launcher, the local dev stack and demo."""
