"""The four customer-relationship-manager tools over the ``crm`` table."""

import operator

from environment.workplace.matching import boolean_mask, column_contains
from environment.workplace.paging import Page
from environment.workplace.series_ops import checked_value, column_max, compare, contains_value
from environment.workplace.state import EpisodeState
from environment.workplace.tables import has_column

STATUSES = ["Qualified", "Won", "Lost", "Lead", "Proposal"]
PRODUCTS = ["Software", "Hardware", "Services", "Consulting", "Training"]
_CONTAINS_FILTERS = ["customer_name", "customer_email", "product_interest", "status", "assigned_to_email"]


class CustomerRelationshipManagerTool:
    """Method names, parameters and defaults mirror the reference so Python's own argument errors match."""

    def __init__(self, state: EpisodeState):
        self._state = state

    def _has_id(self, customer_id) -> bool:
        table = self._state.crm
        ids = table.column("customer_id")
        return contains_value(ids, table.column_dtype("customer_id"), customer_id)

    def search_customers(
        self,
        customer_name=None,
        customer_email=None,
        product_interest=None,
        status=None,
        assigned_to_email=None,
        last_contact_date_min=None,
        last_contact_date_max=None,
        follow_up_by_min=None,
        follow_up_by_max=None,
        page=1,
        page_size=5,
    ):
        table = self._state.crm
        rows = list(table.rows)
        patterns = [customer_name, customer_email, product_interest, status, assigned_to_email]
        bounds = [
            ("last_contact_date", operator.ge, last_contact_date_min),
            ("last_contact_date", operator.le, last_contact_date_max),
            ("follow_up_by", operator.ge, follow_up_by_min),
            ("follow_up_by", operator.le, follow_up_by_max),
        ]
        if not any(patterns + [b[2] for b in bounds]):
            return "No search parameters provided. Please provide at least one parameter."
        for column, pattern in zip(_CONTAINS_FILTERS, patterns):
            if pattern:
                hits = column_contains([r[column] for r in rows], table.column_dtype(column), pattern)
                rows = [r for r, hit in zip(rows, boolean_mask(hits)) if hit]
        for column, op, bound in bounds:
            if bound:
                hits = compare([r[column] for r in rows], table.column_dtype(column), op, bound)
                rows = [r for r, hit in zip(rows, hits) if hit]
        paged = Page(rows, page, page_size)
        if rows:
            return {
                "customers": paged.rows(),
                "pagination": {
                    "total_customers": len(rows),
                    "page": paged.page,
                    "page_size": page_size,
                    "total_pages": paged.total_pages,
                },
            }
        return "No customers found."

    def update_customer(self, customer_id=None, field=None, new_value=None):
        if not customer_id or not field or not new_value:
            return "Customer ID, field, or new value not provided."
        if field == "status" and new_value not in STATUSES:
            return "Status not valid. Please choose from: 'Qualified', 'Won', 'Lost', 'Lead', 'Proposal'"
        if field == "product_interest" and new_value not in PRODUCTS:
            return (
                "Product interest not valid. Please choose from: 'Software', 'Hardware', 'Services', "
                "'Consulting', 'Training'"
            )
        if field in ["customer_email", "assigned_to_email"]:
            new_value = new_value.lower()
        if self._has_id(customer_id):
            table = self._state.crm
            if has_column(table, field):
                value = checked_value(table.column_dtype(field), new_value)
                table.set_where(field, value, "customer_id", customer_id)
                return "Customer updated successfully."
            return (
                "Field not valid. Please choose from: 'customer_name', 'assigned_to_email', "
                "'customer_email', 'customer_phone', 'last_contact_date', 'product_interest', 'status', "
                "'notes', 'follow_up_by'"
            )
        return "Customer not found."

    def add_customer(
        self,
        customer_name=None,
        assigned_to_email=None,
        status=None,
        customer_email=None,
        customer_phone=None,
        last_contact_date=None,
        product_interest=None,
        notes="",
        follow_up_by=None,
    ):
        if not all([customer_name, assigned_to_email, status]):
            return "Please provide all required fields: customer_name, assigned_to_email, status."
        assigned_to_email = assigned_to_email.lower()
        if customer_email:
            customer_email = customer_email.lower()
        table = self._state.crm
        new_id = str(int(column_max(table.column("customer_id"))) + 1).zfill(8)
        new_customer = {
            "customer_id": new_id,
            "customer_name": customer_name,
            "customer_email": customer_email,
            "customer_phone": customer_phone,
            "last_contact_date": last_contact_date,
            "product_interest": product_interest,
            "status": status,
            "assigned_to_email": assigned_to_email,
            "notes": notes,
            "follow_up_by": follow_up_by,
        }
        table.append(new_customer, ignore_index=True)
        return new_id

    def delete_customer(self, customer_id=None):
        if not customer_id:
            return "Customer ID not provided."
        if not self._has_id(customer_id):
            return "Customer not found."
        self._state.crm.delete_where("customer_id", customer_id)
        return "Customer deleted successfully."
