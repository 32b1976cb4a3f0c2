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


class ImageError(VitExportError):
    """An image the preprocessing refuses: undecodable, empty, or over a size limit. The client's mistake (a server
    answers 400 / INVALID_ARGUMENT), so its message names the limit and never the server's internals."""


class ServingError(VitExportError):
    """A Triton repository, server or client problem: bad repository name, unreachable server, refused request."""


class KubernetesError(ServingError):
    """Manifests that cannot be written as asked: a value Kubernetes would refuse, a model not in the repository."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none: libraries (onnx, OpenVINO,
    TensorRT, torch) raise messages of many lines, and a user gets one."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
