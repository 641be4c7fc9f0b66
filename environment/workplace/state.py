"""One episode's databases: copy-on-write views of the base tables plus the in-memory plots list."""

from environment.workplace.tables import BaseTables, Table, load_base_tables


class EpisodeState:
    """The mutable state the tools act on. Creating one copies nothing (see ``tables.Table``).

    ``plots`` is the reference's ``_plots_data`` frame (one ``file_path`` column, labels 0..n-1, dtype
    object while empty and str after the first row). ``session_duration_float`` records that
    ``analytics_get_average_session_duration`` without bounds cast that column to float in place,
    which later visitor look-ups show.
    """

    __slots__ = (
        "base",
        "emails",
        "calendar",
        "analytics",
        "project_tasks",
        "crm",
        "plots",
        "directory",
        "session_duration_float",
    )

    def __init__(self, base: BaseTables):
        self.base = base
        self.emails = Table(base.emails)
        self.calendar = Table(base.calendar)
        self.analytics = Table(base.analytics)
        self.project_tasks = Table(base.project_tasks)
        self.crm = Table(base.crm)
        self.plots: list[str] = []
        self.directory = base.directory
        self.session_duration_float = False

    @classmethod
    def from_dir(cls, data_dir: str) -> "EpisodeState":
        return cls(load_base_tables(data_dir))
