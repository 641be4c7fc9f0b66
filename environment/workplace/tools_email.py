"""The six email tools over the ``emails`` table (email_id, inbox/outbox, sender/recipient, ...)."""

import operator

from environment.workplace.paging import Page, sort_desc_stable_like_numpy
from environment.workplace.series_ops import column_max, compare, contains_value
from environment.workplace.state import EpisodeState
from environment.workplace.timestamps import parse_timestamp

CURRENT_TIME = "2023-11-30 23:59:00"  # the fixed clock; str(pd.Timestamp) of it


def _searchable_text(row: dict) -> str:
    return f"{row['subject']} {row['body']} {row['sender/recipient']}".lower()


def _sent_date(email: dict):
    return parse_timestamp(email["sent_datetime"]).date()


class EmailTool:
    """Method names, parameters and defaults mirror the reference so Python's own argument errors match."""

    def __init__(self, state: EpisodeState):
        self._state = state

    def _texts(self) -> tuple[dict[int, str], list[str]]:
        """Lower-cased search text of the sandbox's own rows (never mutated): by row identity, and
        aligned with the base rows."""
        derived = self._state.base.derived
        if "email_text" not in derived:
            texts = [_searchable_text(row) for row in self._state.base.emails.rows]
            by_id = {id(row): text for row, text in zip(self._state.base.emails.rows, texts)}
            derived["email_text"] = (by_id, texts)
        return derived["email_text"]

    def _ids(self) -> list:
        return self._state.emails.column("email_id")

    def _rows_with_id(self, email_id) -> list[dict]:
        table = self._state.emails
        mask = compare(self._ids(), table.column_dtype("email_id"), operator.eq, email_id)
        return [row for row, hit in zip(table.rows, mask) if hit]

    def _has_id(self, email_id) -> bool:
        return contains_value(self._ids(), self._state.emails.column_dtype("email_id"), email_id)

    def get_email_information_by_id(self, email_id=None, field=None):
        if not email_id:
            return "Email ID not provided."
        if not field:
            return "Field not provided."
        try:
            rows = self._rows_with_id(email_id)
            if rows:
                if field in rows[0]:
                    return {field: rows[0][field]}
                return f"Field '{field}' not found. Available fields: {', '.join(rows[0].keys())}"
            return "Email not found."
        except Exception as e:
            return f"Error retrieving email information: {e}"

    def search_emails(self, query="", date_min=None, date_max=None, page=1, page_size=5):
        try:
            words = query.lower().split()
            table = self._state.emails
            if table.rows is self._state.base.emails.rows:  # untouched: texts aligned with the rows
                texts = self._texts()[1]
            else:
                by_id = self._texts()[0]
                texts = [by_id.get(id(row)) or _searchable_text(row) for row in table.rows]
            rows = list(table.rows)
            for word in words:
                keep = [word in text for text in texts]
                rows = [row for row, hit in zip(rows, keep) if hit]
                texts = [text for text, hit in zip(texts, keep) if hit]
            order = sort_desc_stable_like_numpy([row["sent_datetime"] for row in rows])
            emails = [rows[i] for i in order]
            if date_min:
                emails = [e for e in emails if _sent_date(e) >= parse_timestamp(date_min).date()]
            if date_max:
                emails = [e for e in emails if _sent_date(e) <= parse_timestamp(date_max).date()]
            paged = Page(emails, page, page_size)
            if emails:
                return {
                    "emails": paged.rows(),
                    "pagination": {
                        "total_emails": len(emails),
                        "page": paged.page,
                        "page_size": page_size,
                        "total_pages": paged.total_pages,
                    },
                }
            return "No emails found."
        except Exception as e:
            return f"Error searching emails: {e}"

    def send_email(self, recipient=None, subject=None, body=None):
        if not recipient or not subject or not body:
            return "Recipient, subject, or body not provided."
        if "@" not in recipient or "." not in recipient:
            return "Invalid recipient email address."
        try:
            recipient = recipient.lower()
            table = self._state.emails
            email_id = str(int(column_max(self._ids())) + 1) if table.rows else "1"
            new_email = {
                "email_id": email_id,
                "inbox/outbox": "outbox",
                "sender/recipient": recipient,
                "subject": subject,
                "sent_datetime": CURRENT_TIME,
                "body": body,
            }
            table.append(new_email, ignore_index=True)
            return "Email sent successfully."
        except Exception as e:
            return f"Error sending email: {e}"

    def delete_email(self, email_id=None):
        if not email_id:
            return "Email ID not provided."
        try:
            if self._has_id(email_id):
                self._state.emails.delete_where("email_id", email_id)
                return "Email deleted successfully."
            return "Email not found."
        except Exception as e:
            return f"Error deleting email: {e}"

    def forward_email(self, email_id=None, recipient=None):
        if not email_id or not recipient:
            return "Email ID or recipient not provided."
        if "@" not in recipient or "." not in recipient:
            return "Invalid recipient email address."
        try:
            if not self._has_id(email_id):
                return "Email not found."
            recipient = recipient.lower()
            email = self._rows_with_id(email_id)[0]
            result = self.send_email(recipient, f"FW: {email['subject']}", email["body"])
            if "Error" in result or "Invalid" in result:
                return result
            return "Email forwarded successfully."
        except Exception as e:
            return f"Error forwarding email: {e}"

    def reply_email(self, email_id=None, body=None):
        if not email_id or not body:
            return "Email ID or body not provided."
        try:
            if not self._has_id(email_id):
                return "Email not found."
            email = self._rows_with_id(email_id)[0]
            result = self.send_email(email["sender/recipient"], f"RE: {email['subject']}", body)
            if "Error" in result or "Invalid" in result:
                return result
            return "Email replied successfully."
        except Exception as e:
            return f"Error replying to email: {e}"
