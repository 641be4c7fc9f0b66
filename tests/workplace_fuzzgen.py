"""Random tool calls for the differential fuzz: valid, borderline and malformed, seeded.

Values come from pools built from the sandbox (real ids, names, fields, dates) mixed with
ill-typed JSON values, regex metacharacters and odd date strings, so that both the happy paths and
every validation branch of the 27 tools are exercised.
"""

import csv
import json
import random
from pathlib import Path

PARAMS = {
    "company_directory_find_email_address": ["name"],
    "email_get_email_information_by_id": ["email_id", "field"],
    "email_search_emails": ["query", "date_min", "date_max", "page", "page_size"],
    "email_send_email": ["recipient", "subject", "body"],
    "email_delete_email": ["email_id"],
    "email_forward_email": ["email_id", "recipient"],
    "email_reply_email": ["email_id", "body"],
    "calendar_get_event_information_by_id": ["event_id", "field"],
    "calendar_search_events": ["query", "time_min", "time_max", "page", "page_size"],
    "calendar_create_event": ["event_name", "participant_email", "event_start", "duration"],
    "calendar_delete_event": ["event_id"],
    "calendar_update_event": ["event_id", "field", "new_value"],
    "analytics_get_visitor_information_by_id": ["visitor_id"],
    "analytics_create_plot": ["time_min", "time_max", "value_to_plot", "plot_type"],
    "analytics_total_visits_count": ["time_min", "time_max"],
    "analytics_engaged_users_count": ["time_min", "time_max"],
    "analytics_traffic_source_count": ["time_min", "time_max", "traffic_source"],
    "analytics_get_average_session_duration": ["time_min", "time_max"],
    "project_management_get_task_information_by_id": ["task_id", "field"],
    "project_management_search_tasks": ["task_name", "assigned_to_email", "list_name", "due_date", "board"],
    "project_management_create_task": ["task_name", "assigned_to_email", "list_name", "due_date", "board"],
    "project_management_delete_task": ["task_id"],
    "project_management_update_task": ["task_id", "field", "new_value"],
    "customer_relationship_manager_search_customers": [
        "customer_name", "customer_email", "product_interest", "status", "assigned_to_email",
        "last_contact_date_min", "last_contact_date_max", "follow_up_by_min", "follow_up_by_max", "page",
        "page_size",
    ],
    "customer_relationship_manager_update_customer": ["customer_id", "field", "new_value"],
    "customer_relationship_manager_add_customer": [
        "customer_name", "assigned_to_email", "status", "customer_email", "customer_phone",
        "last_contact_date", "product_interest", "notes", "follow_up_by",
    ],
    "customer_relationship_manager_delete_customer": ["customer_id"],
}

ODD_STRINGS = ["", " ", "(", "[a", "a{,3}", ".*", "^s", "x$", "\\d", "a|b", "(?=a)", "\\s", "é", "ß", "İ",
               "K", "\\", "*", "+", "?", "nan", "None", "null", "NaT", "0", "-1", "Ümlaut", "日本"]
ODD_DATES = ["2023-11-30", "2023-11-29", "2023-12-01", "2023-11-30 10:00:00", "2023-12-01 09:00:00",
             "2023-11-30T10:00", "2023-11-30 10:00:00Z", "2023/11/30", "11/30/2023", "Nov 30 2023", "abc",
             "2023-13-01", "2023-02-30", "2023", "2023-11", "12", "now", "2023-11-30 25:00:00", "tomorrow",
             "2023-11-30 10:00:00+05:00", "2023-11-30x", "1 pm", "30/11/2023", "2023-12-13"]
ILL_TYPED = [0, 1, 5, -3, 2.5, True, False, [], ["a"], {}, {"k": "v"}, [1, 2], 10**20]
FIELDS = ["email_id", "inbox/outbox", "sender/recipient", "subject", "sent_datetime", "body", "event_id",
          "event_name", "participant_email", "event_start", "duration", "task_id", "task_name",
          "assigned_to_email", "list_name", "due_date", "board", "customer_id", "customer_name",
          "customer_email", "customer_phone", "last_contact_date", "product_interest", "status", "notes",
          "follow_up_by", "bogus"]
ENUMS = ["Backlog", "In Progress", "In Review", "Completed", "backlog", "Back end", "Front end", "Design",
         "design", "Qualified", "Won", "Lost", "Lead", "Proposal", "lost", "Software", "Hardware", "Services",
         "Consulting", "Training", "software", "total_visits", "session_duration_seconds", "user_engaged",
         "visits_direct", "visits_referral", "visits_search_engine", "visits_social_media", "bar", "line",
         "scatter", "histogram", "pie", "direct", "referral", "search engine", "social media"]


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


WRITE_TOOLS = [
    "email_send_email", "email_delete_email", "email_forward_email", "email_reply_email",
    "calendar_create_event", "calendar_delete_event", "calendar_update_event", "analytics_create_plot",
    "project_management_create_task", "project_management_delete_task", "project_management_update_task",
    "customer_relationship_manager_update_customer", "customer_relationship_manager_add_customer",
    "customer_relationship_manager_delete_customer",
]


class CallGenerator:
    """Draws (name, arguments-text) pairs; ``rng`` makes a run reproducible.

    ``call()`` mixes coherent calls (right id kind, valid field, well-formed values) with random and
    malformed ones; ``coherent(name)`` gives an arguments dict that usually succeeds.
    """

    def __init__(self, data_dir: str, rng: random.Random, rare: tuple[str, ...] = ()):
        """``rare`` tools are drawn 4x less often (the reference's email search costs ~50 calls)."""
        root = Path(data_dir)
        self.rng = rng
        self.rare = rare
        emails = _read(root / "processed" / "emails.csv")
        events = _read(root / "processed" / "calendar_events.csv")
        tasks = _read(root / "processed" / "project_tasks.csv")
        crm = _read(root / "processed" / "customer_relationship_manager_data.csv")
        visits = _read(root / "processed" / "analytics_data.csv")
        people = [line.strip() for line in open(root / "raw" / "email_addresses.csv") if line.strip()]
        words = " ".join(e["subject"] for e in emails[:60]).split()
        self.kind_ids = {
            "email": [e["email_id"] for e in emails] + ["500", "501"],
            "event": [e["event_id"] for e in events] + ["00000300", "00000301"],
            "task": [t["task_id"] for t in tasks] + ["00000300"],
            "customer": [c["customer_id"] for c in crm] + ["00000200"],
        }
        self.assignees = sorted({t["assigned_to_email"] for t in tasks})
        self.reps = sorted({c["assigned_to_email"] for c in crm})
        self.people = people
        self.subjects = [e["subject"] for e in emails[:80]]
        self.pools = {
            "ids": [e["email_id"] for e in emails[:40]] + ["500", "501", "00000500", "abc", "1"]
            + [e["event_id"] for e in events[:30]] + ["00000300", "00000301", "1234567", "0000000a"]
            + [t["task_id"] for t in tasks[:30]] + ["00000300"]
            + [c["customer_id"] for c in crm[:30]] + ["00000200", "00000201"],
            "visitor": [v["visitor_id"] for v in visits[:30]] + ["9999", "0860"],
            "people": people + ["Nadia.Moreau@Atlas.com", "someone@example.com", "bad", "a@b", "x@y.z"],
            "names": [p.split(".")[0] for p in people] + [c["customer_name"] for c in crm[:30]]
            + [e["event_name"] for e in events[:30]] + [t["task_name"] for t in tasks[:30]],
            "words": words + ["", "kofi", "update", "Task Update", "zzz nothing", "carlos budget"],
            "dates": ODD_DATES + [c["last_contact_date"] for c in crm[:10]] + [e["event_start"] for e in events[:10]],
        }

    def _string(self, param: str) -> object:
        r, pools = self.rng, self.pools
        if param in ("email_id", "event_id", "task_id", "customer_id"):
            return r.choice(pools["ids"])
        if param == "visitor_id":
            return r.choice(pools["visitor"])
        if param == "field":
            return r.choice(FIELDS)
        if "email" in param or param == "recipient":
            return r.choice(pools["people"])
        if "date" in param or "time" in param or param in ("event_start", "follow_up_by", "due_date"):
            return r.choice(pools["dates"])
        if param in ("list_name", "board", "status", "product_interest", "value_to_plot", "plot_type",
                     "traffic_source"):
            return r.choice(ENUMS)
        if param in ("duration",):
            return r.choice(["30", "60", "0", "-5", "abc", "1.5", " 45 ", "90"])
        if param in ("page", "page_size"):
            return r.choice([1, 2, 3, 5, 10, 50, 0, -1, "1", 2.0])
        if param == "new_value":
            return r.choice(ENUMS + pools["people"] + pools["dates"] + ["30", "0", "New name", "X"])
        if param in ("query", "name", "task_name", "customer_name", "event_name"):
            return r.choice(pools["names"] + pools["words"])
        return r.choice(pools["words"] + pools["names"])

    def value(self, param: str) -> object:
        roll = self.rng.random()
        if roll < 0.72:
            return self._string(param)
        if roll < 0.80:
            return None
        if roll < 0.90:
            return self.rng.choice(ILL_TYPED)
        return self.rng.choice(ODD_STRINGS)

    def arguments(self, name: str) -> dict:
        params = PARAMS.get(name, ["x", "query", "email_id"])
        args = {p: self.value(p) for p in params if self.rng.random() < 0.75}
        if self.rng.random() < 0.05:
            args[self.rng.choice(["foo", "self", "id", "email", "kwargs"])] = "x"
        return args

    def _day(self) -> str:
        return f"2023-{self.rng.choice(['10', '11', '12'])}-{self.rng.randint(1, 30):02d}"

    def _time(self) -> str:
        return f"{self._day()} {self.rng.choice(['09', '10', '13', '15', '17'])}:{self.rng.choice(['00', '30'])}:00"

    def coherent(self, name: str) -> dict:
        """Well-formed arguments for ``name`` (values may still not exist, as a model's would)."""
        r, ids = self.rng, self.kind_ids
        text = r.choice(self.subjects).split()
        phrase = " ".join(text[: r.randint(1, 3)])
        if r.random() < 0.2:
            phrase = phrase.upper()
        email_fields = ["email_id", "inbox/outbox", "sender/recipient", "subject", "sent_datetime", "body"]
        event_fields = ["event_name", "participant_email", "event_start", "duration"]
        task_fields = ["task_name", "assigned_to_email", "list_name", "due_date", "board"]
        crm_fields = ["customer_name", "assigned_to_email", "customer_email", "customer_phone",
                      "last_contact_date", "product_interest", "status", "notes", "follow_up_by"]
        event_values = {"event_name": phrase, "participant_email": r.choice(self.people),
                        "event_start": self._time(), "duration": r.choice(["30", "60", "90"])}
        task_values = {"task_name": phrase, "assigned_to_email": r.choice(self.assignees),
                       "list_name": r.choice(["Backlog", "In Progress", "In Review", "Completed"]),
                       "due_date": self._day(), "board": r.choice(["Back end", "Front end", "Design"])}
        crm_values = {"customer_name": phrase, "assigned_to_email": r.choice(self.reps),
                      "customer_email": "x.y@acme", "customer_phone": "555-0100",
                      "last_contact_date": self._day(), "status": r.choice(["Qualified", "Won", "Lost", "Lead"]),
                      "product_interest": r.choice(["Software", "Hardware", "Services"]), "notes": phrase,
                      "follow_up_by": self._day()}
        field = {"calendar": r.choice(event_fields), "project": r.choice(task_fields),
                 "customer": r.choice(crm_fields)}
        table = {
            "company_directory_find_email_address": {"name": r.choice(self.people).split(".")[0][: r.randint(2, 6)]},
            "email_get_email_information_by_id": {"email_id": r.choice(ids["email"]), "field": r.choice(email_fields)},
            "email_search_emails": {"query": phrase, "date_min": self._day(), "page": r.randint(1, 3),
                                    "page_size": r.randint(1, 8)},
            "email_send_email": {"recipient": r.choice(self.people), "subject": phrase, "body": phrase + "!"},
            "email_delete_email": {"email_id": r.choice(ids["email"])},
            "email_forward_email": {"email_id": r.choice(ids["email"]), "recipient": r.choice(self.people)},
            "email_reply_email": {"email_id": r.choice(ids["email"]), "body": phrase},
            "calendar_get_event_information_by_id": {"event_id": r.choice(ids["event"]),
                                                     "field": r.choice(event_fields + ["event_id"])},
            "calendar_search_events": {"query": r.choice([phrase, r.choice(self.people)[:6], ""]),
                                       "time_min": self._time(), "page_size": r.randint(1, 8)},
            "calendar_create_event": dict(event_values),
            "calendar_delete_event": {"event_id": r.choice(ids["event"])},
            "calendar_update_event": {"event_id": r.choice(ids["event"]), "field": field["calendar"],
                                      "new_value": event_values[field["calendar"]]},
            "analytics_get_visitor_information_by_id": {"visitor_id": r.choice(self.pools["visitor"])},
            "analytics_create_plot": {"time_min": self._day(), "time_max": self._day(),
                                      "value_to_plot": r.choice(ENUMS[21:28]), "plot_type": r.choice(ENUMS[28:32])},
            "analytics_total_visits_count": {"time_min": self._day(), "time_max": self._day()},
            "analytics_engaged_users_count": {"time_min": self._day()},
            "analytics_traffic_source_count": {"time_min": self._day(), "traffic_source": r.choice(ENUMS[33:])},
            "analytics_get_average_session_duration": r.choice([{}, {"time_max": self._day()}]),
            "project_management_get_task_information_by_id": {"task_id": r.choice(ids["task"]),
                                                              "field": r.choice(task_fields + ["task_id"])},
            "project_management_search_tasks": {k: task_values[k] for k in r.sample(task_fields, r.randint(1, 2))},
            "project_management_create_task": dict(task_values),
            "project_management_delete_task": {"task_id": r.choice(ids["task"])},
            "project_management_update_task": {"task_id": r.choice(ids["task"]), "field": field["project"],
                                               "new_value": task_values[field["project"]]},
            "customer_relationship_manager_search_customers": {
                k: crm_values[k] for k in r.sample(["customer_name", "status", "assigned_to_email",
                                                    "product_interest"], r.randint(1, 2))},
            "customer_relationship_manager_update_customer": {"customer_id": r.choice(ids["customer"]),
                                                              "field": field["customer"],
                                                              "new_value": crm_values[field["customer"]]},
            "customer_relationship_manager_add_customer": {
                k: crm_values[k] for k in ["customer_name", "assigned_to_email", "status"]
                + r.sample(crm_fields, 2)},
            "customer_relationship_manager_delete_customer": {"customer_id": r.choice(ids["customer"])},
        }
        return table[name]

    def _tool(self) -> str:
        name = self.rng.choice(list(PARAMS))
        if name in self.rare and self.rng.random() < 0.75:
            name = self.rng.choice(list(PARAMS))
        return name

    def call(self) -> tuple[str, str]:
        r = self.rng
        if r.random() < 0.4:
            name = self._tool()
            return name, json.dumps(self.coherent(name))
        unknown = ["foo", "email_send", "send_email", "Email_send_email"]
        name = self._tool() if r.random() < 0.95 else r.choice(unknown)
        roll = r.random()
        if roll < 0.03:
            return name, r.choice(["{", "", "not json", '{"a": }', "{'a': 1}", '{"a": 1,}', "[1,", "nul"])
        if roll < 0.05:
            return name, json.dumps(r.choice([[1], "x", 5, [], True]))
        return name, json.dumps(self.arguments(name), ensure_ascii=r.random() < 0.5)
