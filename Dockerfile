# syntax=docker/dockerfile:1
# The service's image: compiled dist/ on Node.js 24, production dependencies
# only, run as the unprivileged `node` user. docs/deployment.md says how to
# run it; scripts/check-docker-build.sh runs these build steps outside Docker.

ARG NODE_IMAGE=node:24-bookworm-slim

# Build: every dependency, then the TypeScript compiled to dist/.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY gen ./gen
COPY migrations ./migrations
RUN npm run build

# Production dependencies alone, installed apart so that no development
# dependency (the compiler, buf, vitest, pino-pretty) reaches the image.
FROM ${NODE_IMAGE} AS runtime-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json \
    EMBEDDED_DATA_DIR=/data/pglite
WORKDIR /app
COPY --from=runtime-deps --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --chown=root:root package.json ./
# Without DATABASE_URL the embedded database keeps its files under /data:
# a volume owned by the service's user, owner-only as the service wants it.
RUN mkdir -p /data && chown node:node /data && chmod 0700 /data
VOLUME ["/data"]
USER node
EXPOSE 8000
# Readiness: the database answers and no migration is pending. A service
# serving TLS (TLS_CERT_FILE) needs its own check; see docs/deployment.md.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8000) + '/readyz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# node itself, not npm, so that SIGTERM reaches the service's graceful shutdown.
CMD ["node", "dist/src/main.js"]
