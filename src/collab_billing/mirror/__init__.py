"""Stripe objects mirrored into our tables: customers (the root) and a registry of the rest."""
