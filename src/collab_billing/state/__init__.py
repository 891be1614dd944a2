"""The state document of a user and the notification outbox that records its changes.

Its own package, outside `billing`: the applier (`reconcile.apply`) marks changes here, and
the `billing` package's domain services import the reconciler, so this must import neither.
"""
