/**
 * `shimmy init <docker|compose|systemd|k8s>`: writes deployment files that run the single binary,
 * with health checks on /health, a models volume and the API key read from a secret file
 * (SHIMMY_API_KEY_FILE), so the key never sits in an environment listing or a manifest.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { defineCommand } from "citty";
import { UsageError } from "../../errors.ts";
import { VERSION } from "../../version.ts";

export const INIT_TARGETS = ["docker", "compose", "systemd", "k8s"] as const;
export type InitTarget = (typeof INIT_TARGETS)[number];

export interface InitOptions {
  port: number;
  /** Where the binary lives on the host (systemd) or in the image. */
  bin: string;
  /** The executable copied into the image (docker, compose, k8s). */
  artifact: string;
}

const PORT = 11435;

function dockerfile(o: InitOptions): string {
  return `# shimmy ${VERSION}: the single-file executable in a small image.
# Put ${o.artifact} (from the release page, or \`bun run build\`) beside this file, then:
#   docker build -t shimmy .
#   printf '%s' "$(openssl rand -hex 24)" > api_key
#   docker run -p ${o.port}:${o.port} -v "$PWD/models:/models:ro" -v "$PWD/api_key:/run/secrets/shimmy_api_key:ro" shimmy
FROM debian:bookworm-slim
RUN apt-get update \\
 && apt-get install -y --no-install-recommends ca-certificates curl \\
 && rm -rf /var/lib/apt/lists/* \\
 && useradd --system --home /var/lib/shimmy --create-home shimmy
COPY --chmod=0755 ${o.artifact} /usr/local/bin/shimmy
ENV SHIMMY_MODEL_PATHS=/models \\
    SHIMMY_API_KEY_FILE=/run/secrets/shimmy_api_key \\
    SHIMMY_CACHE_DIR=/var/lib/shimmy/cache \\
    SHIMMY_LOG_FORMAT=json
VOLUME /models
USER shimmy
EXPOSE ${o.port}
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \\
  CMD curl -fsS http://127.0.0.1:${o.port}/health || exit 1
ENTRYPOINT ["/usr/local/bin/shimmy", "serve", "--bind", "0.0.0.0:${o.port}"]
`;
}

function compose(o: InitOptions): string {
  return `# shimmy ${VERSION} with Docker Compose. Put ${o.artifact} and the Dockerfile (\`shimmy init docker\`)
# beside this file, your .gguf files in ./models, the API key in ./api_key, then: docker compose up -d
services:
  shimmy:
    build: .
    image: shimmy:${VERSION}
    restart: unless-stopped
    ports:
      - "${o.port}:${o.port}"
    volumes:
      - ./models:/models:ro
    secrets:
      - shimmy_api_key
    environment:
      SHIMMY_MODEL_PATHS: /models
      SHIMMY_API_KEY_FILE: /run/secrets/shimmy_api_key
    healthcheck:
      test: ["CMD", "curl", "-fsS", "http://127.0.0.1:${o.port}/health"]
      interval: 15s
      timeout: 5s
      start_period: 60s
      retries: 3
secrets:
  shimmy_api_key:
    file: ./api_key
`;
}

function systemd(o: InitOptions): string {
  return `# shimmy ${VERSION} as a systemd service. Install:
#   sudo install -m 0755 ${o.artifact} ${o.bin}
#   sudo install -d -m 0755 /var/lib/shimmy-models   # your .gguf files go here
#   sudo install -d -m 0700 /etc/shimmy && openssl rand -hex 24 | sudo tee /etc/shimmy/api_key >/dev/null
#   sudo cp shimmy.service /etc/systemd/system/ && sudo systemctl daemon-reload && sudo systemctl enable --now shimmy
[Unit]
Description=shimmy local LLM inference server
Documentation=https://github.com/shimmy/shimmy
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart=${o.bin} serve --bind 0.0.0.0:${o.port}
# Ready once /health answers (up to 120 s for a first model load on a slow disk).
ExecStartPost=/bin/sh -c 'for i in $(seq 120); do curl -fsS http://127.0.0.1:${o.port}/health >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1'
Environment=SHIMMY_MODEL_PATHS=/var/lib/shimmy-models
Environment=SHIMMY_CACHE_DIR=/var/cache/shimmy
Environment=SHIMMY_LOG_FORMAT=json
LoadCredential=api_key:/etc/shimmy/api_key
Environment=SHIMMY_API_KEY_FILE=%d/api_key
DynamicUser=yes
CacheDirectory=shimmy
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
Restart=on-failure
RestartSec=5
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
`;
}

function k8s(o: InitOptions): string {
  return `# shimmy ${VERSION} on Kubernetes. Build and push the image from the Dockerfile (\`shimmy init docker\`),
# set it below, create the key and apply:
#   kubectl create secret generic shimmy-api-key --from-literal=api-key="$(openssl rand -hex 24)"
#   kubectl apply -f shimmy.yaml
# Copy .gguf files into the shimmy-models volume (e.g. kubectl cp into the pod's /models).
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: shimmy-models
spec:
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: 20Gi
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shimmy
  labels:
    app: shimmy
spec:
  replicas: 1
  selector:
    matchLabels:
      app: shimmy
  template:
    metadata:
      labels:
        app: shimmy
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        fsGroup: 999
      containers:
        - name: shimmy
          image: shimmy:${VERSION}
          imagePullPolicy: IfNotPresent
          args: ["serve", "--bind", "0.0.0.0:${o.port}"]
          ports:
            - name: http
              containerPort: ${o.port}
          env:
            - name: SHIMMY_MODEL_PATHS
              value: /models
            - name: SHIMMY_API_KEY_FILE
              value: /run/secrets/shimmy/api-key
            - name: SHIMMY_LOG_FORMAT
              value: json
          volumeMounts:
            - name: models
              mountPath: /models
            - name: api-key
              mountPath: /run/secrets/shimmy
              readOnly: true
          readinessProbe:
            httpGet:
              path: /health
              port: http
            periodSeconds: 10
          livenessProbe:
            httpGet:
              path: /health
              port: http
            initialDelaySeconds: 30
            periodSeconds: 20
            failureThreshold: 3
          resources:
            requests:
              cpu: "2"
              memory: 4Gi
      volumes:
        - name: models
          persistentVolumeClaim:
            claimName: shimmy-models
        - name: api-key
          secret:
            secretName: shimmy-api-key
---
apiVersion: v1
kind: Service
metadata:
  name: shimmy
spec:
  selector:
    app: shimmy
  ports:
    - name: http
      port: ${o.port}
      targetPort: http
`;
}

/** The files a target writes (name -> text). */
export function initFiles(target: InitTarget, o: InitOptions): Record<string, string> {
  switch (target) {
    case "docker":
      return { Dockerfile: dockerfile(o) };
    case "compose":
      return { Dockerfile: dockerfile(o), "compose.yaml": compose(o) };
    case "systemd":
      return { "shimmy.service": systemd(o) };
    case "k8s":
      return { "shimmy.yaml": k8s(o) };
  }
}

export default defineCommand({
  meta: { name: "init", description: "Write deployment files that run the single binary: docker, compose, systemd or k8s" },
  args: {
    target: { type: "positional", description: "docker | compose | systemd | k8s", required: true },
    out: { type: "string", description: "Folder to write into (default: the current folder)", valueHint: "DIR" },
    port: { type: "string", description: `Port the server listens on (default ${PORT})`, valueHint: "PORT" },
    bin: { type: "string", description: "Path of the shimmy binary on the host (systemd; default /usr/local/bin/shimmy)", valueHint: "PATH" },
    force: { type: "boolean", description: "Overwrite files that already exist" },
  },
  run({ args }) {
    const target = String(args.target) as InitTarget;
    if (!INIT_TARGETS.includes(target)) throw new UsageError(`unknown init target '${args.target}': expected one of ${INIT_TARGETS.join(", ")}`);
    const port = args.port === undefined ? PORT : Number(args.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`invalid --port '${args.port}': expected an integer from 1 to 65535`);
    const out = path.resolve(args.out ?? ".");
    const files = initFiles(target, { port, bin: args.bin ?? "/usr/local/bin/shimmy", artifact: "shimmy-linux-x64" });
    const existing = Object.keys(files).filter((f) => existsSync(path.join(out, f)));
    if (existing.length && !args.force) throw new UsageError(`${existing.map((f) => path.join(out, f)).join(", ")} already exist${existing.length === 1 ? "s" : ""}: pass --force to overwrite`);
    mkdirSync(out, { recursive: true });
    for (const [name, text] of Object.entries(files)) {
      writeFileSync(path.join(out, name), text);
      process.stderr.write(`wrote ${path.join(out, name)}\n`);
    }
  },
});
