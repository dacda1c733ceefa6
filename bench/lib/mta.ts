import type { Root } from './procs';

export interface MtaStartOptions {
  workDir: string;
  sinkHost: string;
  sinkPort: number;
  /** profile this Tern service with --cpu-prof (Tern only) */
  profile?: string[];
  profileDir?: string;
  /** Tern: collect pg_stat_statements and report the statements per message */
  pgStats?: boolean;
}

/** One system under test: Postfix or Tern. */
export interface Mta {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  start(o: MtaStartOptions): Promise<void>;
  /** processes to account (with their descendants) */
  roots(): Root[];
  /** messages (recipients) not yet in a final state */
  queued(): Promise<number>;
  /** the queue id a delivered message had here, from the Received ids in it (newest first) */
  queueIdOf(receivedIds: string[], messageId: string): string | undefined;
  /** optional: resolve queue ids by Message-Id for messages whose Received header lacks it */
  resolveByMessageId?(messageIds: string[]): Promise<Map<string, string>>;
  /** the MTA's own accept-to-delivery figure per queue id (ms), for cross-checking */
  serverLatencies(): Promise<Map<string, number>>;
  /** called when the measured window opens / closes (Tern: resets and reads pg_stat_statements) */
  windowStart?(): Promise<void>;
  windowReport?(messages: number): Promise<string>;
  /** last errors, for the report when something goes wrong */
  logTail(): string;
  stop(): Promise<void>;
}
