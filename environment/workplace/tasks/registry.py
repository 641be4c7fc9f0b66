"""The template registry: every template of every category, in a fixed order."""

from __future__ import annotations

from environment.workplace.tasks.base import Template


def all_templates() -> tuple[Template, ...]:
    """Every template, grouped by category in base.CATEGORIES order (imported here, not at package import)."""
    from environment.workplace.tasks import analytics, calendar, crm, email, multi_domain, project_management

    templates = (
        email.TEMPLATES
        + calendar.TEMPLATES
        + analytics.TEMPLATES
        + project_management.TEMPLATES
        + crm.TEMPLATES
        + multi_domain.TEMPLATES
    )
    names = [t.name for t in templates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"duplicate template names: {duplicates}")
    return templates


def templates_by_name(names: list[str] | None = None) -> tuple[Template, ...]:
    """The named templates (all when ``names`` is None); unknown names are a clear error."""
    templates = all_templates()
    if names is None:
        return templates
    known = {t.name: t for t in templates}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown template names {unknown}; `megatron-grpo generate-tasks --list-templates` lists the "
            f"{len(known)} known ones"
        )
    return tuple(known[n] for n in names)
