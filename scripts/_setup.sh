# Shared by scripts/demo and scripts/test: a venv with the project installed, and the page.
# Sourced, not run. Idempotent: a second run reuses what the first installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
WEB="$ROOT/examples/demo/web"
CLIENT="$ROOT/clients/js"

EXTRAS="starlette,litestar,fastapi,redis,postgres,prometheus,otel"  # every published extra: the demo flags and tests need them

ensure_venv() {  # $1: the dependency group to install beside the extras, "demo" or "dev"
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$1"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        "$PY" -m pip install --quiet --upgrade "pip>=25.1"  # --group: PEP 735 dependency groups
        "$PY" -m pip install --quiet -e "$ROOT[$EXTRAS]" --group "$ROOT/pyproject.toml:$1"
        touch "$stamp"
    fi
}

LOWEST="$ROOT/.venv-lowest"

ensure_lowest_venv() {  # a second venv: every runtime dependency at the floor pyproject.toml declares
    if [ ! -x "$LOWEST/bin/python" ]; then
        python3 -m venv "$LOWEST"
    fi
    local stamp="$LOWEST/.installed"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        local constraints="$LOWEST/constraints.txt"
        "$LOWEST/bin/python" "$ROOT/scripts/lowest_constraints.py" >"$constraints"
        "$LOWEST/bin/python" -m pip install --quiet --upgrade "pip>=25.1"
        "$LOWEST/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]" --group "$ROOT/pyproject.toml:dev" \
            -c "$constraints"
        touch "$stamp"
    fi
}

page_is_stale() {
    [ ! -f "$WEB/build/index.html" ] && return 0
    [ -n "$(find "$WEB/src" "$WEB/static" "$WEB/package.json" "$WEB/svelte.config.js" "$WEB/vite.config.ts" \
        "$CLIENT/dist" -newer "$WEB/build/index.html" 2>/dev/null | head -1)" ]
}

client_is_stale() {
    [ ! -f "$CLIENT/dist/index.js" ] && return 0
    [ -n "$(find "$CLIENT/src" "$CLIENT/package.json" "$CLIENT"/tsconfig*.json \
        -newer "$CLIENT/dist/index.js" 2>/dev/null | head -1)" ]
}

ensure_client() {  # @progressq/client: its packages and dist/, which the page links to (file:)
    [ -f "$CLIENT/package.json" ] || return 0
    if [ ! -d "$CLIENT/node_modules" ] || [ "$CLIENT/package-lock.json" -nt "$CLIENT/node_modules/.package-lock.json" ]; then
        (cd "$CLIENT" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    if client_is_stale; then
        (cd "$CLIENT" && npm run build --silent)
    fi
}

ensure_node_modules() {
    ensure_client
    if [ ! -d "$WEB/node_modules" ] || [ "$WEB/package-lock.json" -nt "$WEB/node_modules/.package-lock.json" ]; then
        (cd "$WEB" && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

build_page() {  # builds the page when it is missing or older than its sources
    [ -f "$WEB/package.json" ] || return 0
    if page_is_stale; then
        ensure_node_modules
        (cd "$WEB" && npm run build --silent)
    fi
}
