"""The reconciler: Stripe events (polled or pushed by webhooks) into the database."""
