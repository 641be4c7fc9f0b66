"""Project-management templates: create, delete and update tasks (list, assignee, due date, board, name).

"Overdue" always means due before today (2023-11-30) and not completed; the phrasings say so.
"""

from __future__ import annotations

import random
from datetime import timedelta

from environment.workplace.tasks import vocab
from environment.workplace.tasks.base import (
    BOARDS,
    LISTS,
    MAX_WRITES,
    TODAY,
    Draft,
    call,
    collect_templates,
    display_name,
    iso,
    nl_date,
    pick,
    template,
)
from environment.workplace.tasks.sandbox import Sandbox


def _member(rng: random.Random, sb: Sandbox, *exclude: str) -> str:
    return pick(rng, [a for a in sb.assignees() if a not in exclude])


def _overdue(task: dict) -> bool:
    return task["due_date"] < iso(TODAY) and task["list_name"] != "Completed"


def _update(task: dict, field: str, value: str) -> tuple[str, dict[str, str]]:
    return call("project_management_update_task", task_id=task["task_id"], field=field, new_value=value)


def _unique_task(rng: random.Random, sb: Sandbox) -> dict | None:
    """A task whose name is unique among its assignee's tasks, so '<name>'s task <X>' names one task."""
    member = _member(rng, sb)
    own = sb.tasks(assigned_to_email=member)
    if not own:
        return None
    task = pick(rng, own)
    same = [t for t in own if t["task_name"].lower() == task["task_name"].lower()]
    return task if len(same) == 1 else None


def _moves(
    rng: random.Random, sb: Sandbox, source: tuple[str, ...], target: str, overdue_only: bool = False
) -> tuple[str, list] | None:
    member = _member(rng, sb)
    chosen = [
        t for t in sb.tasks(assigned_to_email=member) if t["list_name"] in source and (_overdue(t) or not overdue_only)
    ]
    if len(chosen) > MAX_WRITES:
        return None
    return member, [_update(t, "list_name", target) for t in chosen]


@template(
    "project_management",
    (
        "Move all of {name}'s tasks that are in progress to in review",
        "Can you move {name}'s in-progress tasks to In Review?",
        "Everything {name} has in progress is ready for review - please move those tasks to In Review.",
    ),
    writes=("project_management_update_task",),
    conditional=True,
)
def in_progress_to_review(rng: random.Random, sb: Sandbox) -> Draft | None:
    found = _moves(rng, sb, ("In Progress",), "In Review")
    return None if found is None else Draft({"name": display_name(found[0])}, found[1])


@template(
    "project_management",
    (
        "Move any of {name}'s tasks that are in review to completed",
        "All of {name}'s tasks in review have been approved. Mark them as Completed.",
        "Close out {name}'s in-review tasks by moving them to Completed.",
        "Close out {name}'s in-review tasks by moving them to Completed.",
    ),
    writes=("project_management_update_task",),
    conditional=True,
)
def review_to_completed(rng: random.Random, sb: Sandbox) -> Draft | None:
    found = _moves(rng, sb, ("In Review",), "Completed")
    return None if found is None else Draft({"name": display_name(found[0])}, found[1])


@template(
    "project_management",
    (
        "Move all of {name}'s overdue tasks (due before today) in the backlog to in progress",
        "{name} should start on their overdue backlog tasks - the ones due before today. Move them to In Progress.",
        "Any backlog task of {name}'s that was due before today should move to In Progress.",
        "Any backlog task of {name}'s that was due before today should move to In Progress.",
    ),
    writes=("project_management_update_task",),
    conditional=True,
)
def overdue_backlog_to_in_progress(rng: random.Random, sb: Sandbox) -> Draft | None:
    found = _moves(rng, sb, ("Backlog",), "In Progress", overdue_only=True)
    return None if found is None else Draft({"name": display_name(found[0])}, found[1])


@template(
    "project_management",
    (
        "{name} is on vacation now, so move all their unfinished tasks that are in progress or in review to the "
        "backlog.",
        "Put {name}'s in-progress and in-review tasks back into the Backlog.",
        "Move every task {name} has in progress or in review to the backlog.",
        "Move every task {name} has in progress or in review to the backlog.",
    ),
    writes=("project_management_update_task",),
    conditional=True,
)
def unfinished_to_backlog(rng: random.Random, sb: Sandbox) -> Draft | None:
    found = _moves(rng, sb, ("In Progress", "In Review"), "Backlog")
    return None if found is None else Draft({"name": display_name(found[0])}, found[1])


@template(
    "project_management",
    (
        "Add a new task to the {board} backlog called '{task}' and assign it to {name}. It's due on {date}.",
        "Create a task '{task}' on the {board} board for {name}, in the Backlog list, due {date}.",
        "Please add '{task}' to {name}'s backlog on the {board} board with a deadline of {date}.",
    ),
    writes=("project_management_create_task",),
)
def create_task(rng: random.Random, sb: Sandbox) -> Draft | None:
    member, board, name = _member(rng, sb), pick(rng, BOARDS), pick(rng, vocab.TASK_NAMES)
    due = iso(TODAY + timedelta(days=rng.randint(1, 30)))
    return Draft(
        {"board": board, "task": name, "name": display_name(member), "date": nl_date(due)},
        [
            call(
                "project_management_create_task",
                task_name=name,
                assigned_to_email=member,
                list_name="Backlog",
                due_date=due,
                board=board,
            )
        ],
    )


@template(
    "project_management",
    (
        "{sick} is sick, so reassign their in-progress tasks to {other}.",
        "Give {other} all of {sick}'s tasks that are currently in progress.",
        "{other} is covering for {sick}: assign {sick}'s in-progress tasks to {other}.",
        "{other} is covering for {sick}: assign {sick}'s in-progress tasks to {other}.",
    ),
    writes=("project_management_update_task",),
    conditional=True,
)
def reassign_in_progress(rng: random.Random, sb: Sandbox) -> Draft | None:
    sick = _member(rng, sb)
    other = _member(rng, sb, sick)
    chosen = [t for t in sb.tasks(assigned_to_email=sick) if t["list_name"] == "In Progress"]
    if len(chosen) > MAX_WRITES:
        return None
    return Draft(
        {"sick": display_name(sick), "other": display_name(other)},
        [_update(t, "assigned_to_email", other) for t in chosen],
    )


@template(
    "project_management",
    (
        "Give all the overdue tasks (due before today) that {name} hasn't started to {other}.",
        "Reassign {name}'s backlog tasks that were due before today to {other}.",
        "Hand {name}'s overdue tasks that are still in the backlog (due before today) to {other}.",
        "Hand {name}'s overdue tasks that are still in the backlog (due before today) to {other}.",
    ),
    writes=("project_management_update_task",),
    conditional=True,
)
def reassign_overdue_not_started(rng: random.Random, sb: Sandbox) -> Draft | None:
    member = _member(rng, sb)
    other = _member(rng, sb, member)
    chosen = [t for t in sb.tasks(assigned_to_email=member) if t["list_name"] == "Backlog" and _overdue(t)]
    if len(chosen) > MAX_WRITES:
        return None
    return Draft(
        {"name": display_name(member), "other": display_name(other)},
        [_update(t, "assigned_to_email", other) for t in chosen],
    )


@template(
    "project_management",
    (
        "Take {name}'s most urgent unfinished task and reassign it to {other}.",
        "Which of {name}'s open tasks is due soonest? Give that one to {other}.",
        "Reassign {name}'s not-yet-completed task with the earliest due date to {other}.",
        "Reassign {name}'s not-yet-completed task with the earliest due date to {other}.",
    ),
    writes=("project_management_update_task",),
)
def reassign_most_urgent(rng: random.Random, sb: Sandbox) -> Draft | None:
    member = _member(rng, sb)
    other = _member(rng, sb, member)
    open_tasks = [t for t in sb.tasks(assigned_to_email=member) if t["list_name"] != "Completed"]
    if not open_tasks:
        return None
    soonest = min(t["due_date"] for t in open_tasks)
    urgent = [t for t in open_tasks if t["due_date"] == soonest]
    if len(urgent) != 1:
        return None
    return Draft(
        {"name": display_name(member), "other": display_name(other)},
        [_update(urgent[0], "assigned_to_email", other)],
    )


@template(
    "project_management",
    (
        "Delete {name}'s task '{task}'",
        "We dropped '{task}'. Please delete that task from {name}'s list.",
        "Remove the task '{task}' assigned to {name}.",
    ),
    writes=("project_management_delete_task",),
)
def delete_task(rng: random.Random, sb: Sandbox) -> Draft | None:
    task = _unique_task(rng, sb)
    if task is None:
        return None
    return Draft(
        {"name": display_name(task["assigned_to_email"]), "task": task["task_name"]},
        [call("project_management_delete_task", task_id=task["task_id"])],
    )


@template(
    "project_management",
    (
        "Delete all of {name}'s completed tasks on the {board} board",
        "Clean up the {board} board: remove every completed task assigned to {name}.",
        "Remove {name}'s completed tasks from the {board} board.",
        "Remove {name}'s completed tasks from the {board} board.",
    ),
    writes=("project_management_delete_task",),
    conditional=True,
)
def delete_completed_on_board(rng: random.Random, sb: Sandbox) -> Draft | None:
    member, board = _member(rng, sb), pick(rng, BOARDS)
    chosen = [t for t in sb.tasks(assigned_to_email=member, board=board) if t["list_name"] == "Completed"]
    if len(chosen) > MAX_WRITES:
        return None
    return Draft(
        {"name": display_name(member), "board": board},
        [call("project_management_delete_task", task_id=t["task_id"]) for t in chosen],
    )


@template(
    "project_management",
    (
        "Change the due date of {name}'s task '{task}' to {date}",
        "Push the deadline for '{task}' ({name}'s task) to {date}.",
        "{name} needs until {date} for '{task}'. Please update the due date.",
    ),
    writes=("project_management_update_task",),
)
def change_due_date(rng: random.Random, sb: Sandbox) -> Draft | None:
    task = _unique_task(rng, sb)
    if task is None:
        return None
    due = iso(TODAY + timedelta(days=rng.randint(1, 30)))
    if due == task["due_date"]:
        return None
    return Draft(
        {"name": display_name(task["assigned_to_email"]), "task": task["task_name"], "date": nl_date(due)},
        [_update(task, "due_date", due)],
    )


@template(
    "project_management",
    (
        "Move {name}'s task '{task}' to the {board} board",
        "'{task}' (assigned to {name}) belongs on the {board} board. Can you move it?",
        "Switch the board of {name}'s task '{task}' to {board}.",
        "Switch the board of {name}'s task '{task}' to {board}.",
    ),
    writes=("project_management_update_task",),
)
def move_to_board(rng: random.Random, sb: Sandbox) -> Draft | None:
    task = _unique_task(rng, sb)
    if task is None:
        return None
    board = pick(rng, [b for b in BOARDS if b != task["board"]])
    return Draft(
        {"name": display_name(task["assigned_to_email"]), "task": task["task_name"], "board": board},
        [_update(task, "board", board)],
    )


@template(
    "project_management",
    (
        "Rename {name}'s task '{task}' to '{new_name}'",
        "Change the name of the task '{task}' assigned to {name} to '{new_name}'.",
        "{name}'s task '{task}' should be called '{new_name}' from now on.",
        "{name}'s task '{task}' should be called '{new_name}' from now on.",
    ),
    writes=("project_management_update_task",),
)
def rename_task(rng: random.Random, sb: Sandbox) -> Draft | None:
    task = _unique_task(rng, sb)
    if task is None:
        return None
    new_name = pick(rng, vocab.TASK_NAMES)
    return Draft(
        {"name": display_name(task["assigned_to_email"]), "task": task["task_name"], "new_name": new_name},
        [_update(task, "task_name", new_name)],
    )


@template(
    "project_management",
    (
        "Move {name}'s task '{task}' to {target}",
        "Set the list of '{task}' ({name}) to {target}.",
        "'{task}', assigned to {name}, should now be in the {target} list.",
    ),
    writes=("project_management_update_task",),
)
def move_to_list(rng: random.Random, sb: Sandbox) -> Draft | None:
    task = _unique_task(rng, sb)
    if task is None:
        return None
    target = pick(rng, [name for name in LISTS if name != task["list_name"]])
    return Draft(
        {"name": display_name(task["assigned_to_email"]), "task": task["task_name"], "target": target},
        [_update(task, "list_name", target)],
    )


TEMPLATES = collect_templates(globals())
