"""The five project-management tools over ``project_tasks`` (task_id, task_name, assigned_to_email, ...)."""

import operator
import re

from environment.workplace.matching import boolean_mask, column_contains
from environment.workplace.series_ops import checked_value, column_max, compare, contains_value
from environment.workplace.state import EpisodeState
from environment.workplace.tables import has_column

LISTS = ["Backlog", "In Progress", "In Review", "Completed"]
BOARDS = ["Back end", "Front end", "Design"]
_BAD_LIST = "List not valid. Please choose from: 'Backlog', 'In Progress', 'In Review', 'Completed'."
_BAD_BOARD = "Board not valid. Please choose from: 'Back end', 'Front end', 'Design'."
_BAD_ASSIGNEE = "Assignee email not valid. Please choose from the list of team members."
_EMAIL_PATTERN = r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$"


def _lower(value):
    return value.lower() if isinstance(value, str) else value


class ProjectManagementTool:
    """Method names, parameters and defaults mirror the reference so Python's own argument errors match."""

    def __init__(self, state: EpisodeState):
        self._state = state

    def _column(self, name: str, rows=None) -> list:
        if rows is None:
            return self._state.project_tasks.column(name)
        return [row[name] for row in rows]

    def _assignees(self) -> set:
        return {a.lower() for a in self._column("assigned_to_email") if isinstance(a, str)}

    def _has_id(self, task_id) -> bool:
        table = self._state.project_tasks
        return contains_value(self._column("task_id"), table.column_dtype("task_id"), task_id)

    def get_task_information_by_id(self, task_id=None, field=None):
        if not task_id:
            return "Task ID not provided."
        if not field:
            return "Field not provided."
        table = self._state.project_tasks
        mask = compare(self._column("task_id"), table.column_dtype("task_id"), operator.eq, task_id)
        rows = [row for row, hit in zip(table.rows, mask) if hit]
        if rows:
            if field in rows[0]:
                return {field: rows[0][field]}
            return "Field not found."
        return "Task not found."

    def search_tasks(self, task_name=None, assigned_to_email=None, list_name=None, due_date=None, board=None):
        if not any([task_name, assigned_to_email, list_name, due_date, board]):
            return "No search parameters provided."
        if assigned_to_email and not re.match(_EMAIL_PATTERN, assigned_to_email):
            return "Invalid email format for assigned_to_email."
        table = self._state.project_tasks
        rows = list(table.rows)

        def keep_containing(column: str, pattern) -> list:
            hits = column_contains(self._column(column, rows), table.column_dtype(column), pattern)
            return [row for row, hit in zip(rows, boolean_mask(hits)) if hit]

        if task_name:
            rows = keep_containing("task_name", task_name)
        if assigned_to_email:
            wanted = assigned_to_email.lower()
            rows = [r for r in rows if _lower(r["assigned_to_email"]) == wanted]
        if list_name:
            rows = keep_containing("list_name", list_name)
        if due_date:
            rows = keep_containing("due_date", due_date)
        if board:
            rows = keep_containing("board", board)
        return [dict(row) for row in rows]

    def create_task(self, task_name=None, assigned_to_email=None, list_name=None, due_date=None, board=None):
        if not all([task_name, assigned_to_email, list_name, due_date, board]):
            return "Missing task details."
        assigned_to_email = assigned_to_email.lower()
        if assigned_to_email not in self._assignees():
            return _BAD_ASSIGNEE
        if list_name not in LISTS:
            return _BAD_LIST
        if board not in BOARDS:
            return _BAD_BOARD
        task_id = str(int(column_max(self._column("task_id"))) + 1).zfill(8)
        new_task = {
            "task_id": task_id,
            "task_name": task_name,
            "assigned_to_email": assigned_to_email,
            "list_name": list_name,
            "due_date": due_date,
            "board": board,
        }
        self._state.project_tasks.append(new_task, ignore_index=True)
        return task_id

    def delete_task(self, task_id=None):
        if not task_id:
            return "Task ID not provided."
        if self._has_id(task_id):
            self._state.project_tasks.delete_where("task_id", task_id)
            return "Task deleted successfully."
        return "Task not found."

    def update_task(self, task_id=None, field=None, new_value=None):
        if not task_id or not field or not new_value:
            return "Task ID, field, or new value not provided."
        if field == "assigned_to_email":
            new_value = new_value.lower()
        if field == "board" and new_value not in BOARDS:
            return _BAD_BOARD
        if field == "list_name" and new_value not in LISTS:
            return _BAD_LIST
        if field == "assigned_to_email" and new_value not in self._assignees():
            return _BAD_ASSIGNEE
        if self._has_id(task_id):
            table = self._state.project_tasks
            if has_column(table, field):
                value = checked_value(table.column_dtype(field), new_value)
                table.set_where(field, value, "task_id", task_id)
                return "Task updated successfully."
            return "Field not valid."
        return "Task not found."
