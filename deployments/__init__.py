"""Prefect work pools (and later automations) as code, and the script that applies them."""
