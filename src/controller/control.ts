// The control socket of a running controller: a job's (`crinc run`, `crinc attach`),
// which other crinc commands ask to checkpoint (so its dirty tracking stays continuous)
// or for the job's status, and the daemon's (`crinc daemon`), which speaks the same
// protocol with more requests (src/controller/daemon.ts).
// One JSON request per connection, one JSON response, newline-terminated. The socket
// lives in a root-only directory (0700) and is itself 0600.
import { chmodSync, existsSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { asOperatingError, CrincError } from '../errors.js';

export const CONTROL_SOCKET = 'control.sock';
/** A checkpoint of a large job may take minutes; a status answer takes milliseconds. */
export const CONTROL_TIMEOUT_MS = 15 * 60_000;
const MAX_REQUEST_BYTES = 64 * 1024;

export type ControlRequest = { op: 'checkpoint'; keepImagesDir?: string } | { op: 'status' } | { op: 'stop'; checkpoint: boolean; graceMs: number };
/** operating: an operating error (CrincError) whose message is for a person; else a bug, its message the remote stack. */
export type ControlResponse = { ok: true; result: unknown } | { ok: false; error: { name: string; message: string; operating: boolean } };

export class ControlError extends CrincError {
  override name = 'ControlError';
}

/** An operating error raised inside the controller, carried to the asking command with its name. */
export class RemoteError extends CrincError {
  constructor(name: string, message: string) {
    super(message);
    this.name = name;
  }
}

/** A bug inside the controller: its message is the controller's stack. */
export class RemoteBugError extends Error {
  override name = 'RemoteBugError';
}

/** What a controller answers for a failed request. */
function errorResponse(e: unknown): ControlResponse {
  const operating = asOperatingError(e);
  if (operating) return { ok: false, error: { name: operating.name, message: operating.message, operating: true } };
  const err = e instanceof Error ? e : new Error(String(e));
  return { ok: false, error: { name: err.name, message: `in the controller: ${err.stack ?? err.message}`, operating: false } };
}

export function controlSocketPath(jobDir: string): string {
  return join(jobDir, CONTROL_SOCKET);
}

export async function serveControl<Req extends { op: string } = ControlRequest>(path: string, handle: (req: Req) => Promise<unknown>): Promise<Server> {
  // A socket file left by a controller that died is stale: nothing listens on it.
  if (existsSync(path)) rmSync(path);
  const server = createServer((conn) => {
    let buf = '';
    conn.setEncoding('utf8');
    conn.on('data', (d: string) => {
      buf += d;
      if (buf.length > MAX_REQUEST_BYTES) conn.destroy();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      let req: Req;
      try {
        req = JSON.parse(buf.slice(0, nl)) as Req;
      } catch {
        conn.end(JSON.stringify(errorResponse(new ControlError('malformed request'))) + '\n');
        return;
      }
      handle(req).then(
        (result) => conn.end(JSON.stringify({ ok: true, result } satisfies ControlResponse) + '\n'),
        (e: unknown) => conn.end(JSON.stringify(errorResponse(e)) + '\n'),
      );
    });
    conn.on('error', () => conn.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  server.unref();
  return server;
}

/** Asks the controller; undefined when no controller listens (the caller works standalone). */
export async function askController<Req extends { op: string } = ControlRequest>(path: string, req: Req): Promise<unknown | undefined> {
  if (!existsSync(path)) return undefined;
  return new Promise((resolve, reject) => {
    const conn = createConnection(path);
    let buf = '';
    let connected = false;
    conn.setEncoding('utf8');
    conn.setTimeout(CONTROL_TIMEOUT_MS, () => conn.destroy(new ControlError(`the controller at ${path} did not answer within ${CONTROL_TIMEOUT_MS / 60_000} min`)));
    conn.on('connect', () => {
      connected = true;
      conn.write(JSON.stringify(req) + '\n');
    });
    conn.on('data', (d: string) => (buf += d));
    conn.on('error', (e: NodeJS.ErrnoException) => {
      // Nobody listens on a stale socket: work without the controller.
      if (!connected && (e.code === 'ECONNREFUSED' || e.code === 'ENOENT')) resolve(undefined);
      else reject(e);
    });
    conn.on('end', () => {
      try {
        const res = JSON.parse(buf) as ControlResponse;
        if (res.ok) resolve(res.result);
        else reject(res.error.operating ? new RemoteError(res.error.name, res.error.message) : new RemoteBugError(res.error.message));
      } catch {
        reject(new ControlError(`the controller at ${path} gave a malformed answer: ${buf.slice(0, 200)}`));
      }
    });
  });
}
