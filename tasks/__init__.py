"""Celery tasks: thin wrappers that hand a job to nxjobs.client.operations.

Task names come from nxjobs.jobs (never from module paths), and modules use
shared_task so they never import the app.
"""
