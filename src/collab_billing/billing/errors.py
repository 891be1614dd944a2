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


class InvalidField(BillingError):
    """A well-formed field whose value the catalog refuses: answered like a validation error
    (FastAPI's 422 shape, `loc` naming the field), so clients handle one 422 shape."""

    status_code = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def details(self) -> list[dict[str, object]]:
        return [{"loc": ["body", self.field], "msg": self.message, "type": "value_error"}]


def unknown_user(github_user_id: int) -> NotFound:
    return NotFound(f"no user with github_user_id {github_user_id}: create it with POST /users")
