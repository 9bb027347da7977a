# syntax=docker/dockerfile:1
# DynamoDB stand-in: dynalite (LevelDB under /data/dynamodb), the version pinned in tools/node.
FROM node:20-slim
WORKDIR /opt/dynalite
COPY tools/node/package.json tools/node/package-lock.json tools/node/dynalite-server.js ./
RUN npm ci --omit=dev --no-audit --no-fund && mkdir -p /data/dynamodb && chown -R node /data
USER node
EXPOSE 4567
HEALTHCHECK --interval=5s --timeout=3s \
  CMD ["node", "-e", "require('net').connect(4567, '127.0.0.1').on('connect', () => process.exit(0)).on('error', () => process.exit(1))"]
# dynalite behind the wrapper that refuses requests from web pages (see the file).
ENTRYPOINT ["node", "dynalite-server.js"]
CMD ["--host", "127.0.0.1", "--port", "4567", "--path", "/data/dynamodb"]
