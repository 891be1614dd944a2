"""Errors of the billing domain, each with the HTTP status it means to a caller."""

from __future__ import annotations

from collab_billing.billing.money import format_amount


class BillingError(Exception):
    status_code = 400

    def __init__(self, message: str, extra: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # More members of the error's JSON body, beside `detail`.
        self.extra = extra or {}


class NotFound(BillingError):
    status_code = 404


class Conflict(BillingError):
    status_code = 409


class Misconfigured(BillingError):
    """A setting names what the mirrored catalog does not hold: the operator's to fix."""

    status_code = 503


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


def overdue_invoice(
    github_user_id: int, invoice_id: str, amount: int, currency: str, url: str | None
) -> Conflict:
    """409: the user owes an invoice; its hosted page is where it is paid."""
    return Conflict(
        f"user {github_user_id} has an overdue invoice {invoice_id} "
        f"({format_amount(amount, currency)}): pay it first at {url}",
        {
            "hosted_invoice_url": url,
            "invoice": {
                "id": invoice_id,
                "amount_remaining": amount,
                "currency": currency,
                "hosted_invoice_url": url,
            },
        },
    )
