"""tritonserver flags that `serve -- <flags>` passes through, and Triton's response cache (`serve --response-cache`).

Any flag goes through but the ones that would undo what `serve` guarantees: the repository APIs closed (or behind a
key), the models it was asked to serve from the repository it was given, the address and ports it was told, and the
log it reads to report failures. tritonserver reads its flags with getopt_long, which takes any unambiguous
abbreviation (`--model-control` for `--model-control-mode`): those are refused as the flag they abbreviate.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitexport.errors import ServingError

# flag -> why `serve` refuses it (what to use instead).
_MODEL_CONTROL = "model control is --allow-model-control (explicit mode, behind a key)"
_RESTRICTED = "the restricted APIs are vitexport's: --allow-model-control opens the repository API behind a key"
_LISTEN = "the address and ports are serve's --host, --http-port, --grpc-port and --metrics-port"
_REPOSITORY = "the repository is serve's --repo (and its models --models)"
REFUSED = {
    "--model-control-mode": _MODEL_CONTROL,
    "--load-model": _MODEL_CONTROL,
    "--http-restricted-api": _RESTRICTED,
    "--grpc-restricted-protocol": _RESTRICTED,
    "--http-address": _LISTEN,
    "--grpc-address": _LISTEN,
    "--metrics-address": _LISTEN,
    "--http-port": _LISTEN,
    "--grpc-port": _LISTEN,
    "--metrics-port": _LISTEN,
    "--model-repository": _REPOSITORY,
    "--model-store": _REPOSITORY,
    "--backend-directory": "the backends are the ones vitexport assembles for this interpreter",
    "--cache-directory": "the response cache is --response-cache MB, from the Triton wheel's caches",
    "--log-file": "serve reads Triton's log to report why it stopped",
}
MAX_CACHE_MB = 1 << 20  # 1 TiB: far above any machine here, below what size= (bytes, uint64) can hold


def check_passthrough(args: Sequence[str]) -> tuple[str, ...]:
    """The flags to append to tritonserver's command line, or one line naming the first refused one and why."""
    for arg in args:
        if not arg.startswith("--") or len(arg) < 4:
            continue  # a value given as its own word, or what tritonserver itself will refuse
        name = arg.split("=", 1)[0]
        for flag, why in REFUSED.items():
            if flag.startswith(name) and (name == flag or len(name) > len("--") + 2):
                shown = name if name == flag else f"{name} ({flag})"
                raise ServingError(f"tritonserver flag {shown} is not passed through: {why}")
    return tuple(args)


def response_cache_args(megabytes: int) -> tuple[str, ...]:
    """Triton's local response cache of `megabytes` (0: none). Only models whose config enables `response_cache`
    use it: the repository enables it on image ensembles whose answer depends on their input alone."""
    if megabytes == 0:
        return ()
    if not 0 < megabytes <= MAX_CACHE_MB:
        raise ServingError(f"--response-cache must be 0..{MAX_CACHE_MB} MB, got {megabytes}")
    from vitexport.serving.install import TritonInstall

    caches = TritonInstall.find().server.parent.parent / "caches"  # the wheel's, not /opt/tritonserver/caches
    return (f"--cache-directory={caches}", f"--cache-config=local,size={megabytes << 20}")
