"""Errors bmslice raises on purpose; the CLI turns each into one `error: ...` line and exit 2."""


class BmsliceError(Exception):
    """Base of every error meant for the user, never a traceback."""


class TopologyError(BmsliceError):
    """The host could not be read (missing tree, unreachable libvirt, unparsable XML)."""


class SpecError(BmsliceError):
    """The slicing spec is malformed: names file, field and reason."""


class PlanError(BmsliceError):
    """No valid layout exists: names the resource that fell short and by how much."""


class RenderError(BmsliceError):
    """A plan cannot be written as files libvirt and the host accept (the reason and the way out), or
    a value would break the grammar of a file bmslice generates: the file is not written."""


class ApplyError(BmsliceError):
    """A change to the host failed or was refused; the host was left as it was."""


class LabError(BmsliceError):
    """The lab could not be shaped, fetched, booted, reached or stopped; nothing was left running.

    `details` (the lab's console tail, say) is shown under the one error line, each line marked.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details
