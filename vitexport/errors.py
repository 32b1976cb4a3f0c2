"""One error hierarchy: the CLI turns any of these into one line on stderr and exit code 1."""


class VitExportError(Exception):
    """Base of every error a user can cause and fix."""


class UnknownModelError(VitExportError):
    pass


class CheckpointError(VitExportError):
    pass


class ExportError(VitExportError):
    pass


class ValidationError(VitExportError):
    """An artifact's outputs drifted past the tolerance; the message lists every failed check."""


class ArtifactError(VitExportError):
    """An artifact or its sidecar is missing, unreadable or of the wrong kind."""


class ServingError(VitExportError):
    """A Triton repository, server or client problem: bad repository name, unreachable server, refused request."""
