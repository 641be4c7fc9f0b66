"""Every Workplace tool: the happy path and every error message, on the reference sandbox data.

Expected values are computed here from the CSV files with the csv module (not with the code under
test); error texts are the reference's literal strings.
"""

import csv
import json
from pathlib import Path

import pytest
from data_paths import sandbox_dir

from environment.workplace import WorkplaceEnv

DATA_DIR = Path(sandbox_dir())


def _read(name: str) -> list[dict]:
    with open(DATA_DIR / "processed" / name, newline="") as f:
        return list(csv.DictReader(f))


EMAILS = _read("emails.csv")
EVENTS = _read("calendar_events.csv")
TASKS = _read("project_tasks.csv")
CUSTOMERS = _read("customer_relationship_manager_data.csv")
VISITS = _read("analytics_data.csv")
DIRECTORY = [line.strip() for line in open(DATA_DIR / "raw" / "email_addresses.csv") if line.strip()]


@pytest.fixture
def env() -> WorkplaceEnv:
    return WorkplaceEnv(str(DATA_DIR))


def out(env: WorkplaceEnv, tool: str, **args):
    text = env.call(tool, json.dumps(args))
    return json.loads(text)["output"]


def error(name: str, message: str) -> str:
    return f"Error executing tool '{name}': {message}"


def _blank(value: str):
    return None if value == "" else value


# ---------------------------------------------------------------- company directory


def test_directory(env):
    assert out(env, "company_directory_find_email_address", name="NADIA") == [a for a in DIRECTORY if "nadia" in a]
    assert out(env, "company_directory_find_email_address", name="zzz") == []
    assert out(env, "company_directory_find_email_address", name="") == "Name not provided."
    assert out(env, "company_directory_find_email_address") == "Name not provided."
    bad_regex = out(env, "company_directory_find_email_address", name="(")
    assert bad_regex == error("company_directory_find_email_address", "Invalid regular expression: missing ): (")


# ---------------------------------------------------------------- email


def test_email_get_information(env):
    email = EMAILS[7]
    name = "email_get_email_information_by_id"
    assert out(env, name, email_id=email["email_id"], field="subject") == {"subject": email["subject"]}
    assert out(env, name, email_id=email["email_id"], field="body") == {"body": email["body"]}
    assert out(env, name, field="subject") == "Email ID not provided."
    assert out(env, name, email_id=email["email_id"]) == "Field not provided."
    assert out(env, name, email_id=email["email_id"], field="cc") == (
        "Field 'cc' not found. Available fields: email_id, inbox/outbox, sender/recipient, subject, "
        "sent_datetime, body"
    )
    assert out(env, name, email_id="99999999", field="subject") == "Email not found."


def _search_expected(words: list[str]) -> list[dict]:
    hits = [
        e for e in EMAILS
        if all(w in f"{e['subject']} {e['body']} {e['sender/recipient']}".lower() for w in words)
    ]
    return sorted(hits, key=lambda e: e["sent_datetime"], reverse=True)


def test_email_search_and_pagination(env):
    expected = _search_expected(["kofi"])
    result = out(env, "email_search_emails", query="Kofi", page=2, page_size=3)
    assert result["emails"] == expected[3:6]
    total_pages = (len(expected) + 2) // 3
    assert result["pagination"] == {"total_emails": len(expected), "page": 2, "page_size": 3,
                                    "total_pages": total_pages}
    last = out(env, "email_search_emails", query="kofi", page=99, page_size=3)
    assert last["pagination"]["page"] == total_pages  # clamped
    assert out(env, "email_search_emails", query="kofi")["emails"] == expected[:5]  # default page size 5
    day = expected[0]["sent_datetime"][:10]
    in_day = [e for e in expected if e["sent_datetime"][:10] == day]
    dated = out(env, "email_search_emails", query="kofi", date_min=day, date_max=day, page_size=50)
    assert dated["emails"] == in_day  # both bounds inclusive, dates only
    assert out(env, "email_search_emails", query="no such words here") == "No emails found."
    assert out(env, "email_search_emails", query="kofi", page="1") == (
        "Error searching emails: '<' not supported between instances of 'int' and 'str'"
    )


def test_email_send_gives_unpadded_id_and_fixed_clock(env):
    name = "email_send_email"
    assert out(env, name, recipient="Nadia.Moreau@Atlas.com", subject="Hi", body="B") == "Email sent successfully."
    new_id = str(max(int(e["email_id"]) for e in EMAILS) + 1)
    assert new_id == "500"
    sent = out(env, "email_search_emails", query="nadia.moreau", date_min="2023-11-30", page_size=50)["emails"]
    assert sent[0] == {"email_id": "500", "inbox/outbox": "outbox", "sender/recipient": "nadia.moreau@atlas.com",
                       "subject": "Hi", "sent_datetime": "2023-11-30 23:59:00", "body": "B"}
    assert out(env, name, recipient="a@b.c", subject="x", body="y") == "Email sent successfully."
    assert out(env, "email_get_email_information_by_id", email_id="501", field="email_id") == {"email_id": "501"}
    assert out(env, name, recipient="a@b.c", subject="x") == "Recipient, subject, or body not provided."
    assert out(env, name, recipient="a@b.c", subject="", body="y") == "Recipient, subject, or body not provided."
    assert out(env, name, recipient="nadia", subject="x", body="y") == "Invalid recipient email address."
    assert out(env, name, recipient="a@b", subject="x", body="y") == "Invalid recipient email address."


def test_email_delete(env):
    email_id = EMAILS[3]["email_id"]
    assert out(env, "email_delete_email", email_id=email_id) == "Email deleted successfully."
    assert out(env, "email_delete_email", email_id=email_id) == "Email not found."
    assert out(env, "email_delete_email") == "Email ID not provided."


def test_email_forward_and_reply(env):
    email = EMAILS[11]
    fw = out(env, "email_forward_email", email_id=email["email_id"], recipient="Luis.Ortiz@atlas.com")
    assert fw == "Email forwarded successfully."
    got = out(env, "email_get_email_information_by_id", email_id="500", field="subject")
    assert got == {"subject": f"FW: {email['subject']}"}
    assert out(env, "email_get_email_information_by_id", email_id="500", field="body") == {"body": email["body"]}
    assert out(env, "email_forward_email", email_id=email["email_id"]) == "Email ID or recipient not provided."
    assert out(env, "email_forward_email", email_id=email["email_id"], recipient="luis") == (
        "Invalid recipient email address."
    )
    assert out(env, "email_forward_email", email_id="123", recipient="a@b.c") == "Email not found."
    assert out(env, "email_reply_email", email_id=email["email_id"], body="Thanks") == "Email replied successfully."
    reply = {f: out(env, "email_get_email_information_by_id", email_id="501", field=f)[f]
             for f in ("sender/recipient", "subject", "body")}
    assert reply == {"sender/recipient": email["sender/recipient"], "subject": f"RE: {email['subject']}",
                     "body": "Thanks"}
    assert out(env, "email_reply_email", email_id=email["email_id"]) == "Email ID or body not provided."
    assert out(env, "email_reply_email", email_id="123", body="x") == "Email not found."


# ---------------------------------------------------------------- calendar

FIELDS_INFO = "event_id, event_name, participant_email, event_start, duration"
FIELDS_UPDATE = "event_name, participant_email, event_start, duration"


def test_calendar_get_information(env):
    event, name = EVENTS[5], "calendar_get_event_information_by_id"
    assert out(env, name, event_id=event["event_id"], field="event_start") == {"event_start": event["event_start"]}
    assert out(env, name, field="event_name") == "Event ID not provided."
    assert out(env, name, event_id=event["event_id"]) == "Field not provided."
    assert out(env, name, event_id="123", field="event_name") == "Invalid event ID format. Expected 8-digit ID."
    invalid_field = f"Invalid field. Available fields are: {FIELDS_INFO}"
    assert out(env, name, event_id=event["event_id"], field="x") == invalid_field
    assert out(env, name, event_id="99999999", field="event_name") == "Event not found."


def test_calendar_search(env):
    name = "calendar_search_events"
    query = EVENTS[0]["participant_email"].split("@")[0]
    start = "2023-11-01 00:00:00"
    expected = [e for e in EVENTS if query in e["participant_email"] or query in e["event_name"].lower()]
    expected = sorted((e for e in expected if e["event_start"] >= start), key=lambda e: e["event_start"],
                      reverse=True)
    result = out(env, name, query=query.upper(), time_min=start, page_size=4)
    assert result["events"] == expected[:4]
    assert result["pagination"] == {"total_events": len(expected), "page": 1, "page_size": 4,
                                    "total_pages": (len(expected) + 3) // 4}
    assert out(env, name, query="nothing-like-this") == "No events found."
    assert out(env, name, time_min="soon") == "Invalid time_min format. Expected YYYY-MM-DD HH:MM:SS."
    assert out(env, name, time_max="later") == "Invalid time_max format. Expected YYYY-MM-DD HH:MM:SS."


def test_calendar_create(env):
    name = "calendar_create_event"
    ok = {"event_name": "Sync", "participant_email": "Luis.Ortiz@atlas.com", "event_start": "2023-12-01 10:00:00",
          "duration": "30"}
    assert out(env, name, **ok) == "00000300"
    assert out(env, "calendar_get_event_information_by_id", event_id="00000300", field="participant_email") == {
        "participant_email": "luis.ortiz@atlas.com"}
    assert out(env, name, **ok) == "00000301"
    for missing, message in [("event_name", "Event name not provided."),
                             ("participant_email", "Participant email not provided."),
                             ("event_start", "Event start not provided."),
                             ("duration", "Event duration not provided.")]:
        assert out(env, name, **{k: v for k, v in ok.items() if k != missing}) == message
    assert out(env, name, **dict(ok, event_start="next week")) == (
        "Invalid event_start format. Expected YYYY-MM-DD HH:MM:SS.")
    assert out(env, name, **dict(ok, duration="-30")) == "Duration must be a positive number of minutes."
    assert out(env, name, **dict(ok, duration="half an hour")) == (
        "Invalid duration format. Expected a number of minutes.")


def test_calendar_delete_and_update(env):
    event_id = EVENTS[9]["event_id"]
    name = "calendar_update_event"
    assert out(env, name, event_id=event_id, field="participant_email", new_value="A@B.com") == (
        "Event updated successfully.")
    assert out(env, "calendar_get_event_information_by_id", event_id=event_id, field="participant_email") == {
        "participant_email": "a@b.com"}
    assert out(env, name, event_id=event_id, field="event_name") == "Event ID, field, or new value not provided."
    assert out(env, name, event_id="1", field="event_name", new_value="x") == (
        "Invalid event ID format. Expected 8-digit ID.")
    assert out(env, name, event_id=event_id, field="event_id", new_value="x") == (
        f"Invalid field. Available fields are: {FIELDS_UPDATE}")
    assert out(env, name, event_id=event_id, field="event_start", new_value="x") == (
        "Invalid event_start format. Expected YYYY-MM-DD HH:MM:SS.")
    assert out(env, name, event_id=event_id, field="duration", new_value="0") == (
        "Duration must be a positive number of minutes.")
    assert out(env, name, event_id=event_id, field="duration", new_value="x") == (
        "Invalid duration format. Expected a number of minutes.")
    assert out(env, name, event_id="99999999", field="event_name", new_value="x") == "Event not found."
    assert out(env, "calendar_delete_event", event_id=event_id) == "Event deleted successfully."
    assert out(env, "calendar_delete_event", event_id=event_id) == "Event not found."
    assert out(env, "calendar_delete_event") == "Event ID not provided."
    assert out(env, "calendar_delete_event", event_id="abc") == "Invalid event ID format. Expected 8-digit ID."


# ---------------------------------------------------------------- analytics


def _per_date(rows, value):
    counts: dict = {}
    for row in sorted(rows, key=lambda r: r["date_of_visit"]):
        counts[row["date_of_visit"]] = counts.get(row["date_of_visit"], 0) + value(row)
    return counts


def test_analytics_counts(env):
    lo, hi = "2023-11-25", "2023-11-30"
    rows = [v for v in VISITS if lo <= v["date_of_visit"] <= hi]
    assert out(env, "analytics_total_visits_count", time_min=lo, time_max=hi) == _per_date(rows, lambda r: 1)
    assert out(env, "analytics_engaged_users_count", time_min=lo, time_max=hi) == _per_date(
        rows, lambda r: int(r["user_engaged"] == "True"))
    assert out(env, "analytics_traffic_source_count", time_min=lo, time_max=hi, traffic_source="direct") == (
        _per_date(rows, lambda r: int(r["traffic_source"] == "direct")))
    sums, counts = _per_date(rows, lambda r: int(r["session_duration_seconds"])), _per_date(rows, lambda r: 1)
    averages = out(env, "analytics_get_average_session_duration", time_min=lo, time_max=hi)
    assert averages == {d: sums[d] / counts[d] for d in sums}
    assert len(out(env, "analytics_total_visits_count")) == len({v["date_of_visit"] for v in VISITS})


def test_analytics_visitor_and_plot(env):
    visitor = VISITS[0]["visitor_id"]
    visits = out(env, "analytics_get_visitor_information_by_id", visitor_id=visitor)
    expected = [dict(v, user_engaged=v["user_engaged"] == "True") for v in VISITS if v["visitor_id"] == visitor]
    assert visits == expected
    # The reference casts session durations to float in place when averaging over everything.
    out(env, "analytics_get_average_session_duration")
    visits = out(env, "analytics_get_visitor_information_by_id", visitor_id=visitor)
    assert [v["session_duration_seconds"] for v in visits] == [float(v["session_duration_seconds"]) for v in expected]
    assert out(env, "analytics_get_visitor_information_by_id") == "Visitor ID not provided."
    assert out(env, "analytics_get_visitor_information_by_id", visitor_id="x") == "Visitor not found."
    name = "analytics_create_plot"
    ok = {"time_min": "2023-11-01", "time_max": "2023-11-29", "value_to_plot": "total_visits", "plot_type": "bar"}
    assert out(env, name, **ok) == "plots/2023-11-01_2023-11-29_total_visits_bar.png"
    assert out(env, name, **dict(ok, time_min="")) == "Start date not provided."
    assert out(env, name, **dict(ok, time_max="")) == "End date not provided."
    assert out(env, name, **dict(ok, value_to_plot="visits")) == (
        "Value to plot must be one of 'total_visits', 'session_duration_seconds', 'user_engaged', "
        "'visits_direct', 'visits_referral', 'visits_search_engine', 'visits_social_media'")
    assert out(env, name, **dict(ok, plot_type="pie")) == (
        "Plot type must be one of 'bar', 'line', 'scatter', or 'histogram'")


# ---------------------------------------------------------------- project management


def test_project_get_and_search(env):
    task = TASKS[4]
    name = "project_management_get_task_information_by_id"
    assert out(env, name, task_id=task["task_id"], field="board") == {"board": task["board"]}
    assert out(env, name, field="board") == "Task ID not provided."
    assert out(env, name, task_id=task["task_id"]) == "Field not provided."
    assert out(env, name, task_id=task["task_id"], field="owner") == "Field not found."
    assert out(env, name, task_id="99999999", field="board") == "Task not found."
    search = "project_management_search_tasks"
    person = task["assigned_to_email"]
    expected = [t for t in TASKS if t["assigned_to_email"] == person and "back" in t["board"].lower()]
    assert out(env, search, assigned_to_email=person.upper(), board="BACK") == expected
    assert out(env, search, assigned_to_email=person[:5] + "@atlas.com") == []  # exact match only
    assert out(env, search) == "No search parameters provided."
    assert out(env, search, assigned_to_email="nadia") == "Invalid email format for assigned_to_email."


def test_project_create_delete_update(env):
    name = "project_management_create_task"
    person = TASKS[0]["assigned_to_email"]
    ok = {"task_name": "Write docs", "assigned_to_email": person.upper(), "list_name": "Backlog",
          "due_date": "2023-12-05", "board": "Design"}
    assert out(env, name, **ok) == "00000300"
    assert out(env, name, **dict(ok, board="")) == "Missing task details."
    assert out(env, name, **dict(ok, assigned_to_email="someone@atlas.com")) == (
        "Assignee email not valid. Please choose from the list of team members.")
    assert out(env, name, **dict(ok, list_name="backlog")) == (
        "List not valid. Please choose from: 'Backlog', 'In Progress', 'In Review', 'Completed'.")
    assert out(env, name, **dict(ok, board="design")) == (
        "Board not valid. Please choose from: 'Back end', 'Front end', 'Design'.")
    update = "project_management_update_task"
    task_id = TASKS[2]["task_id"]
    assert out(env, update, task_id=task_id, field="list_name", new_value="Completed") == "Task updated successfully."
    assert out(env, "project_management_get_task_information_by_id", task_id=task_id, field="list_name") == {
        "list_name": "Completed"}
    assert out(env, update, task_id=task_id, field="board") == "Task ID, field, or new value not provided."
    assert out(env, update, task_id=task_id, field="board", new_value="QA") == (
        "Board not valid. Please choose from: 'Back end', 'Front end', 'Design'.")
    assert out(env, update, task_id=task_id, field="list_name", new_value="Done") == (
        "List not valid. Please choose from: 'Backlog', 'In Progress', 'In Review', 'Completed'.")
    assert out(env, update, task_id=task_id, field="assigned_to_email", new_value="x@y.com") == (
        "Assignee email not valid. Please choose from the list of team members.")
    assert out(env, update, task_id=task_id, field="owner", new_value="x") == "Field not valid."
    assert out(env, update, task_id="99999999", field="task_name", new_value="x") == "Task not found."
    assert out(env, "project_management_delete_task", task_id=task_id) == "Task deleted successfully."
    assert out(env, "project_management_delete_task", task_id=task_id) == "Task not found."
    assert out(env, "project_management_delete_task") == "Task ID not provided."


# ---------------------------------------------------------------- CRM


def test_crm_search(env):
    name = "customer_relationship_manager_search_customers"
    rep = CUSTOMERS[0]["assigned_to_email"]
    expected = [{k: _blank(v) for k, v in c.items()} for c in CUSTOMERS
                if c["assigned_to_email"] == rep and c["status"] == "Won"]
    result = out(env, name, assigned_to_email=rep.split("@")[0].upper(), status="won", page_size=100)
    assert result["customers"] == expected
    assert result["pagination"] == {"total_customers": len(expected), "page": 1, "page_size": 100, "total_pages": 1}
    # Dates are compared as strings against values like "2023-11-09 23:59:00".
    day = CUSTOMERS[0]["last_contact_date"][:10]
    upto = out(env, name, last_contact_date_max=day, page_size=500)
    assert upto["pagination"]["total_customers"] == sum(c["last_contact_date"] <= day for c in CUSTOMERS)
    assert all(c["last_contact_date"][:10] != day for c in upto["customers"])
    assert out(env, name) == "No search parameters provided. Please provide at least one parameter."
    assert out(env, name, customer_name="Nobody Atall") == "No customers found."


def test_crm_update_add_delete(env):
    customer_id = CUSTOMERS[6]["customer_id"]
    name = "customer_relationship_manager_update_customer"
    assert out(env, name, customer_id=customer_id, field="customer_email", new_value="X@Y.COM") == (
        "Customer updated successfully.")
    found = out(env, "customer_relationship_manager_search_customers", customer_email="x@y.com")
    assert found["customers"][0]["customer_id"] == customer_id
    assert found["customers"][0]["customer_email"] == "x@y.com"
    assert out(env, name, customer_id=customer_id, field="status") == (
        "Customer ID, field, or new value not provided.")
    assert out(env, name, customer_id=customer_id, field="status", new_value="lost") == (
        "Status not valid. Please choose from: 'Qualified', 'Won', 'Lost', 'Lead', 'Proposal'")
    assert out(env, name, customer_id=customer_id, field="product_interest", new_value="Food") == (
        "Product interest not valid. Please choose from: 'Software', 'Hardware', 'Services', 'Consulting', "
        "'Training'")
    assert out(env, name, customer_id=customer_id, field="age", new_value="3") == (
        "Field not valid. Please choose from: 'customer_name', 'assigned_to_email', 'customer_email', "
        "'customer_phone', 'last_contact_date', 'product_interest', 'status', 'notes', 'follow_up_by'")
    assert out(env, name, customer_id="99999999", field="status", new_value="Won") == "Customer not found."
    add = "customer_relationship_manager_add_customer"
    assert out(env, add, customer_name="Zed Quill", assigned_to_email="Nadia.Moreau@atlas.com",
               status="whatever", notes=None) == "00000200"  # status is not validated; null dropped
    added = out(env, "customer_relationship_manager_search_customers", customer_name="Zed Quill")["customers"]
    assert added == [{"customer_id": "00000200", "assigned_to_email": "nadia.moreau@atlas.com",
                      "customer_name": "Zed Quill", "customer_email": None, "customer_phone": None,
                      "last_contact_date": None, "product_interest": None, "status": "whatever",
                      "follow_up_by": None, "notes": ""}]
    assert out(env, add, customer_name="X", status="Lead") == (
        "Please provide all required fields: customer_name, assigned_to_email, status.")
    delete = "customer_relationship_manager_delete_customer"
    assert out(env, delete, customer_id=customer_id) == "Customer deleted successfully."
    assert out(env, delete, customer_id=customer_id) == "Customer not found."
    assert out(env, delete) == "Customer ID not provided."


# ---------------------------------------------------------------- the server/agent envelope


def test_envelope_texts(env):
    assert env.call("email_delete_email", '{"email_id": "123"}') == '{"output":"Email not found."}'
    assert env.call("foo", "{}") == '{"output":"Error executing tool \'foo\': \'foo\'"}'
    assert json.loads(env.call("email_send_email", '{"foo": 1}'))["output"] == error(
        "email_send_email", "EmailTool.send_email() got an unexpected keyword argument 'foo'")
    assert env.call("email_send_email", "{bad") == json.dumps(
        {"error": "Invalid tool call arguments: JSONDecodeError('Expecting property name enclosed in double "
                  "quotes: line 1 column 2 (char 1)')"})
    assert env.call("email_send_email", "") == json.dumps(
        {"error": "Invalid tool call arguments: JSONDecodeError('Expecting value: line 1 column 1 (char 0)')"})
    # an int where the reference's pandas string column rejects it
    assert json.loads(env.call("calendar_update_event", json.dumps(
        {"event_id": EVENTS[0]["event_id"], "field": "duration", "new_value": 30})))["output"] == error(
        "calendar_update_event",
        "Invalid value '30' for dtype 'str'. Value should be a string or missing value, got 'int' instead.")
    assert env.calls[0] == {"name": "email_delete_email", "arguments": '{"email_id": "123"}'}
    env.reset()
    assert env.calls == []


def test_email_exception_wrappers(env):
    """Each email tool catches exceptions into its own "Error ...: <pandas/Python text>" message."""
    ambiguous = "The truth value of an array with more than one element is ambiguous. Use a.any() or a.all()"
    assert out(env, "email_get_email_information_by_id", email_id=["x"], field="subject") == (
        f"Error retrieving email information: ('Lengths must match to compare', ({len(EMAILS)},), (1,))")
    assert out(env, "email_delete_email", email_id=["a", "b"]) == f"Error deleting email: {ambiguous}"
    assert out(env, "email_forward_email", email_id=["a", "b"], recipient="a@b.c") == (
        f"Error forwarding email: {ambiguous}")
    assert out(env, "email_reply_email", email_id=["a", "b"], body="x") == f"Error replying to email: {ambiguous}"
    assert out(env, "email_send_email", recipient=["@", "."], subject="s", body="b") == (
        "Error sending email: 'list' object has no attribute 'lower'")
    try:  # the interpreter's own wording (it changed across Python versions)
        "@" in 5  # noqa: B015
    except TypeError as e:
        not_iterable = str(e)
    assert out(env, "email_send_email", recipient=5, subject="s", body="b") == error("email_send_email", not_iterable)
