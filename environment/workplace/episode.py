"""One episode: isolated databases plus the 27 tools bound to them, called by name.

``Episode.call(name, args)`` runs a tool exactly as the reference's server does after it has parsed
the request: it returns the tool's raw Python result (a dict, list or string; validation failures
such as ``"Email not found."`` are ordinary return values) and raises ``ToolError`` where the
reference raised an exception, with ``str(exception)`` as its message.
"""

from typing import Any

from environment.workplace.state import EpisodeState
from environment.workplace.tables import BaseTables
from environment.workplace.tools_analytics import AnalyticsTool
from environment.workplace.tools_calendar import CalendarTool
from environment.workplace.tools_crm import CustomerRelationshipManagerTool
from environment.workplace.tools_directory import CompanyDirectoryTool
from environment.workplace.tools_email import EmailTool
from environment.workplace.tools_project import ProjectManagementTool

# Tool name -> (toolkit attribute, method), in the order of the reference's schema list.
TOOLS: dict[str, tuple[str, str]] = {
    "company_directory_find_email_address": ("directory", "find_email_address"),
    "email_get_email_information_by_id": ("email", "get_email_information_by_id"),
    "email_search_emails": ("email", "search_emails"),
    "email_send_email": ("email", "send_email"),
    "email_delete_email": ("email", "delete_email"),
    "email_forward_email": ("email", "forward_email"),
    "email_reply_email": ("email", "reply_email"),
    "calendar_get_event_information_by_id": ("calendar", "get_event_information_by_id"),
    "calendar_search_events": ("calendar", "search_events"),
    "calendar_create_event": ("calendar", "create_event"),
    "calendar_delete_event": ("calendar", "delete_event"),
    "calendar_update_event": ("calendar", "update_event"),
    "analytics_get_visitor_information_by_id": ("analytics", "get_visitor_information_by_id"),
    "analytics_create_plot": ("analytics", "create_plot"),
    "analytics_total_visits_count": ("analytics", "total_visits_count"),
    "analytics_engaged_users_count": ("analytics", "engaged_users_count"),
    "analytics_traffic_source_count": ("analytics", "traffic_source_count"),
    "analytics_get_average_session_duration": ("analytics", "get_average_session_duration"),
    "project_management_get_task_information_by_id": ("project_management", "get_task_information_by_id"),
    "project_management_search_tasks": ("project_management", "search_tasks"),
    "project_management_create_task": ("project_management", "create_task"),
    "project_management_delete_task": ("project_management", "delete_task"),
    "project_management_update_task": ("project_management", "update_task"),
    "customer_relationship_manager_search_customers": ("customer_relationship_manager", "search_customers"),
    "customer_relationship_manager_update_customer": ("customer_relationship_manager", "update_customer"),
    "customer_relationship_manager_add_customer": ("customer_relationship_manager", "add_customer"),
    "customer_relationship_manager_delete_customer": ("customer_relationship_manager", "delete_customer"),
}


class ToolError(Exception):
    """A tool raised (the reference returns ``Error executing tool '<name>': <message>``)."""


class Episode:
    """Fresh state for one episode and the tools bound to it. Cheap to create (copy-on-write)."""

    def __init__(self, base: BaseTables):
        self.state = EpisodeState(base)
        self._toolkits = {
            "directory": CompanyDirectoryTool(self.state),
            "email": EmailTool(self.state),
            "calendar": CalendarTool(self.state),
            "analytics": AnalyticsTool(self.state),
            "project_management": ProjectManagementTool(self.state),
            "customer_relationship_manager": CustomerRelationshipManagerTool(self.state),
        }

    def function(self, name: Any):
        """The bound tool method; KeyError for an unknown name, as the reference's dict lookup."""
        toolkit, method = TOOLS[name]
        return getattr(self._toolkits[toolkit], method)

    def call(self, name: str, args: dict) -> Any:
        """Run tool ``name`` with keyword ``args``; raise ToolError where the reference raised."""
        try:
            return self.function(name)(**args)
        except Exception as e:  # the reference turns any exception into an error string
            raise ToolError(str(e)) from e
