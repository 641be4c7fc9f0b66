"""The system prompt of the reference environment (NeMo-Gym workplace_assistant, Apache-2.0), verbatim.

Every sample's first input message is this text; the fixed clock in it (2023-11-30 23:59:00) is the
clock the tools use.
"""

SYSTEM_PROMPT = (
    "Today's date is Thursday, 2023-11-30 and the current time is 23:59:00. Remember the current date "
    "and time when answering queries. Meetings must not start before 9am or end after 6pm."
)
