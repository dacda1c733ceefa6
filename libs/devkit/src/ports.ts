// Free loopback ports for test listeners, claimed across every test process
// on the machine.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** A free TCP port on `host` (default 127.0.0.1), as the OS hands one out. */
// Ports for test listeners are handed out from below the kernel's ephemeral
// range (32768-60999 on Linux), so an outgoing connection can never be
// holding one, and each is claimed with a lock file shared by every test
// process on the machine (a port asked for by two test files at once was the
// cause of EADDRINUSE flakes: freePort() then a later bind elsewhere).
const PORT_RANGE = { min: 20_000, max: 32_000 };
const PORT_LOCK_DIR = path.join(os.tmpdir(), 'tern-test-ports');
const claimedPorts = new Set<number>();

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock file of `port` for this process; false when a live process holds it. */
function claimPort(port: number): boolean {
  fs.mkdirSync(PORT_LOCK_DIR, { recursive: true });
  const file = path.join(PORT_LOCK_DIR, String(port));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      if (claimedPorts.size === 0) {
        process.once('exit', () => {
          for (const p of claimedPorts) fs.rmSync(path.join(PORT_LOCK_DIR, String(p)), { force: true });
        });
      }
      claimedPorts.add(port);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number(fs.readFileSync(file, 'utf8').trim());
      if (owner && pidAlive(owner)) return false;
      fs.rmSync(file, { force: true }); // its process is gone: a stale claim
    }
  }
  return false;
}

function bindable(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

/** A port that is free on `host` now and claimed for this process (see above). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = PORT_RANGE.min + crypto.randomInt(PORT_RANGE.max - PORT_RANGE.min);
    if (claimedPorts.has(port) || !claimPort(port)) continue;
    if (await bindable(port, host)) return port;
  }
  throw new Error(`no free port in ${PORT_RANGE.min}-${PORT_RANGE.max} on ${host} after 200 tries`);
}
