"""company_directory_find_email_address (the read-only company directory)."""

from environment.workplace.matching import str_column_contains
from environment.workplace.state import EpisodeState


class CompanyDirectoryTool:
    """Method names, parameters and defaults mirror the reference so Python's own argument errors match."""

    def __init__(self, state: EpisodeState):
        self._state = state

    def find_email_address(self, name=""):
        if name == "":
            return "Name not provided."
        name = name.lower()
        addresses = list(self._state.directory)
        return [a for a, hit in zip(addresses, str_column_contains(addresses, name)) if hit]
