#!/usr/bin/env bash
# Make the perf_analyzer that tritonclient's wheel puts in VENV/bin start as is (run by setup.sh after every pip
# install, which puts the wheel's binary back). It links libb64.so.0d and libcudart.so.12 by those plain names and has
# no RPATH; nvidia-pytriton ships both under hashed names (nvidia_pytriton.libs/libb64-<hash>.so.0d). So: the binary
# moves to VENV/lib/perf_analyzer/, beside links to the two libraries under their plain names, and VENV/bin/perf_analyzer
# becomes a wrapper that points the loader there. Safe to run again; a machine without either wheel is left alone.
set -euo pipefail
venv=${1:?usage: perf_analyzer.sh VENV}
bin=$venv/bin/perf_analyzer
home=$venv/lib/perf_analyzer
libs=$(ls -d "$venv"/lib/python3*/site-packages/nvidia_pytriton.libs 2>/dev/null | head -n 1)
[ -e "$bin" ] && [ -n "$libs" ] || exit 0
mkdir -p "$home"
for pair in libb64.so.0d:libb64- libcudart.so.12:libcudart-; do
    found=$(ls "$libs/${pair#*:}"* | head -n 1)
    ln -sfn "../${found#"$venv"/lib/}" "$home/${pair%%:*}"  # relative: the links hold where the venv moves
done
if [ "$(head -c 4 "$bin" | tail -c 3)" = "ELF" ]; then  # the wheel's binary (again): move it, wrap it
    cp -p "$bin" "$home/perf_analyzer.tmp" && mv -f "$home/perf_analyzer.tmp" "$home/perf_analyzer"
fi
cat > "$bin.tmp" <<'WRAPPER'
#!/bin/sh
# perf_analyzer from tritonclient's wheel, with the libraries it needs under their plain names (vitexport's
# scripts/perf_analyzer.sh wrote this; `pip install` puts the bare binary back, scripts/setup.sh wraps it again).
home="$(dirname "$(readlink -f "$0")")/../lib/perf_analyzer"
LD_LIBRARY_PATH="$home${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$home/perf_analyzer" "$@"
WRAPPER
chmod 755 "$bin.tmp"
mv -f "$bin.tmp" "$bin"  # a rename: a perf_analyzer starting meanwhile runs either the old or the new one
