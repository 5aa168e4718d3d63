#!/usr/bin/env bash
# Runs the Dockerfile's build steps outside Docker, where base images cannot
# be pulled: in a temporary copy holding only the files the Dockerfile
# copies, `npm ci` and `npm run build`; then, apart, `npm ci --omit=dev` and
# the compiled dist/, started with plain node as the image starts it (as an
# unprivileged user when run as root, its embedded database in a folder of
# its own) and checked with the image's own HEALTHCHECK command. Then
# `docker compose config` on compose.yaml, where the Compose plugin exists.
# What this cannot check: the base images themselves, and the image as built.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dockerfile="$repo/Dockerfile"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
chmod 0755 "$work"

# The Dockerfile, with continuation lines joined, as JSON for the steps below.
instructions() {
  node -e '
    const text = require("node:fs").readFileSync(process.argv[1], "utf8").replace(/\\\n/g, " ");
    const lines = text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
    console.log(JSON.stringify(lines));
  ' "$dockerfile"
}

echo "--- build stage: the files the Dockerfile copies from the context, npm ci, npm run build"
build="$work/build"
mkdir -p "$build"
# Every COPY without --from names context paths: copy exactly those, so a
# file the build needs but the Dockerfile forgets fails here too.
instructions | node -e '
  const lines = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
  for (const line of lines) {
    const words = line.split(/\s+/);
    if (words[0] !== "COPY" || words.some((w) => w.startsWith("--from"))) continue;
    const args = words.slice(1).filter((w) => !w.startsWith("--"));
    for (const source of args.slice(0, -1)) console.log(source);
  }
' | sort -u | while read -r source; do
  mkdir -p "$build/$(dirname "$source")"
  cp -R "$repo/$source" "$build/$source"
done
(cd "$build" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error && npm run build --silent)
test -f "$build/dist/src/main.js" && test -f "$build/dist/src/cli/migrate.js"

echo "--- runtime stage: production dependencies only, and dist/"
runtime="$work/app"
mkdir -p "$runtime"
cp "$repo/package.json" "$repo/package-lock.json" "$runtime/"
(cd "$runtime" && npm ci --omit=dev --prefer-offline --no-audit --no-fund --loglevel=error)
cp -R "$build/dist" "$runtime/dist"
# Nothing the lock file marks as needed by development alone may be there.
leaked=$(node -e '
  const fs = require("node:fs");
  const { packages } = JSON.parse(fs.readFileSync(process.argv[1] + "/package-lock.json", "utf8"));
  const dev = Object.entries(packages).filter(([path, entry]) => path && entry.dev).map(([path]) => path);
  console.log(dev.filter((path) => fs.existsSync(`${process.argv[1]}/${path}`)).join(" "));
' "$runtime")
if [ -n "$leaked" ]; then echo "development dependencies in the production install: $leaked"; exit 1; fi
test ! -e "$runtime/node_modules/typescript" && test ! -e "$runtime/node_modules/vitest"

echo "--- start dist/ with plain node, as the image does, and run its HEALTHCHECK"
# The image's environment (ENV in the Dockerfile), with tokens since HOST is
# not loopback, and a port of the system's choosing.
data="$work/data"
mkdir -p "$data"
run_as=()
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
  chown 65534:65534 "$data"
  run_as=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
fi
chmod 0700 "$data"
token="check-docker-build-token-$$"
export NODE_ENV=production HOST=0.0.0.0 PORT=0 LOG_FORMAT=json EMBEDDED_DATA_DIR="$data/pglite" \
  INGEST_API_TOKENS="$token" FEED_API_TOKENS="$token"
unset DATABASE_URL NATS_URL OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
log="$work/server.log"
(cd "$runtime" && exec "${run_as[@]}" node dist/src/main.js) >"$log" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do grep -q "listening on" "$log" && break; kill -0 "$server_pid" 2>/dev/null || break; sleep 1; done
port=$(grep -o 'listening on http://[^ ]*:[0-9]*' "$log" | grep -o '[0-9]*$' || true)
if [ -z "$port" ]; then echo "the server did not start:"; cat "$log"; exit 1; fi
health=$(instructions | node -e '
  const lines = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
  const line = lines.find((l) => l.startsWith("HEALTHCHECK"));
  console.log(JSON.stringify(JSON.parse(line.slice(line.indexOf("CMD") + 3).trim())));
')
PORT="$port" node -e '
  const [command, ...args] = JSON.parse(process.argv[1]);
  const result = require("node:child_process").spawnSync(command, args, { stdio: "inherit" });
  process.exit(result.status ?? 1);
' "$health" || { echo "the image's HEALTHCHECK failed against the server"; cat "$log"; exit 1; }
curl -sf "http://127.0.0.1:${port}/ingest/message" -H 'Content-Type: application/json' -H "Authorization: Bearer $token" \
  -d '{"source":"whatsapp","sender_id":"5511999999999","content":"teste","metadata":{}}' | grep -q '"status":"persisted"'
kill -TERM "$server_pid"
wait "$server_pid" || { echo "the server did not exit 0 on SIGTERM"; cat "$log"; exit 1; }
server_pid=""
(cd "$runtime" && "${run_as[@]}" node dist/src/cli/migrate.js status) | grep -q "0 pending"
echo "build steps, production install, start, HEALTHCHECK, ingest, SIGTERM and migrate status: ok"

echo "--- compose.yaml"
if docker compose version >/dev/null 2>&1; then
  INGEST_API_TOKENS="$token" FEED_API_TOKENS="$token" docker compose -f "$repo/compose.yaml" config -q
  echo "docker compose config: ok"
else
  echo "skipped: the docker compose plugin is not installed here"
fi
