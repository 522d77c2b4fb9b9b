#!/usr/bin/env bash
# Installs what the tests need, then runs the checks and the whole test suite.
# Usage: scripts/test.sh            (from anywhere inside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step prints the seconds since the start, so a slow phase shows in the log.
started=$(date +%s)
say() { printf '\n==> [%4ds] %s\n' "$(($(date +%s) - started))" "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

# System packages used by the end-to-end tests (network namespaces, captures, clients).
need_pkgs=()
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v iptables >/dev/null || need_pkgs+=(iptables)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v tcpdump >/dev/null || need_pkgs+=(tcpdump)
command -v prometheus >/dev/null || need_pkgs+=(prometheus)
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v buildah >/dev/null || need_pkgs+=(buildah)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_pkgs+=(postgresql)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    say "installing ${need_pkgs[*]}"
    if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"; }; then
        echo "could not install ${need_pkgs[*]}; end-to-end tests fall back to loopback where they can" >&2
    fi
fi

# Rust tools.
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
if ! command -v cargo-nextest >/dev/null; then
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# The API contract test runs schemathesis against the global's OpenAPI document.
if ! command -v schemathesis >/dev/null; then
    say "installing schemathesis"
    if python3 -m pip install --quiet --disable-pip-version-check "schemathesis==4.32.5"; then
        scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
        [ -x "$scripts_dir/schemathesis" ] && export STRAIT_SCHEMATHESIS="$scripts_dir/schemathesis"
    else
        echo "could not install schemathesis; the API contract test will say so" >&2
    fi
fi

# The Helm chart's tests render it with the real Helm engine (helm-python-sdk bundles Helm as a
# library) and validate the manifests and CRDs with kubernetes-validate.
if ! python3 -c 'import helm_python, kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
    say "installing helm-python-sdk and kubernetes-validate"
    python3 -m pip install --quiet --disable-pip-version-check "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" \
        || echo "could not install helm-python-sdk or kubernetes-validate; the chart tests will say so" >&2
fi

# The build takes several GB; say how much there is, so a full disk is the first thing a failed
# link is checked against.
say "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free where the build goes"

say "format"
cargo fmt --all --check

say "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "build"
# The end-to-end tests run every binary of the workspace, so build them all first, together with
# the tests: one invocation resolves features with the dev-dependencies, as the test run does, so
# the binaries and their dependencies are built once and reused rather than built twice.
cargo build --workspace --bins --tests --examples --locked

say "test"
profile=default
[ "${CI:-}" = true ] && profile=ci
cargo nextest run --workspace --locked --profile "$profile" --no-tests=fail
say "done"
