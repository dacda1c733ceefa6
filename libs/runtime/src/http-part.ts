// An HTTP server (a service's /metrics, /healthz, /readyz) as a part of its
// service: started by its serve function, closed at drain.
import type http from 'node:http';
import { Part } from './components';

export class HttpServerPart extends Part {
  private server: http.Server | undefined;

  constructor(name: string, serve: () => Promise<http.Server>) {
    super(name, {
      start: async () => {
        this.server = await serve();
      },
      drain: () => new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve())),
    });
  }

  /** The bound port (after start). */
  get port(): number | undefined {
    const addr = this.server?.address();
    return addr && typeof addr === 'object' ? addr.port : undefined;
  }
}
