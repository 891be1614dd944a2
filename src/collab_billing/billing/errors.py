"""Errors of the billing domain, each with the HTTP status it means to a caller."""

from __future__ import annotations


class BillingError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(BillingError):
    status_code = 404


class Conflict(BillingError):
    status_code = 409


def unknown_user(github_user_id: int) -> NotFound:
    return NotFound(f"no user with github_user_id {github_user_id}: create it with POST /users")
