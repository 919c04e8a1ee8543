"""Service configuration (pydantic-settings). Imports nothing else of ours."""
