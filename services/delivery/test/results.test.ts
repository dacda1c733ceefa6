// Delivery's result publisher against a real NATS JetStream: results that
// finish within the delay travel as one DeliveryResults message, each caller
// learns only after that message is stored, and a refused publish fails
// every result of it (their jobs are then redelivered).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startNats, type NatsServerHandle } from '@tern/devkit';
import { Bus, SUBJECTS } from '@tern/bus';
import { DeliveryResult, DeliveryResults } from '@tern/proto';
import { batchMsgId, ResultPublisher } from '../src/results';
import { logger } from './helpers';

const result = (jobId: string) => DeliveryResult.fromPartial({ jobId, queueId: `q-${jobId}`, destination: 'dest.example', remoteHost: 'mx.dest.example' });

describe('ResultPublisher', () => {
  let nats: NatsServerHandle;
  let bus: Bus;

  before(async () => {
    nats = await startNats();
    bus = await Bus.connect({ url: nats.url, name: 'results-test', logger });
    await bus.ensureTopology(['queue']);
  });
  after(async () => {
    await bus?.close();
    await nats?.stop();
  });

  /** Every message on the results stream from sequence `from`, acknowledged. */
  async function stored(from: number): Promise<{ subject: string; results: DeliveryResult[]; msgId: string }[]> {
    const out = [];
    const info = await bus.jsm.streams.info('TERN_RESULTS');
    for (let seq = from; seq <= info.state.last_seq; seq++) {
      const m = await bus.jsm.streams.getMessage('TERN_RESULTS', { seq });
      assert.ok(m, `stream message ${seq}`);
      out.push({ subject: m.subject, results: DeliveryResults.decode(m.data).results, msgId: m.header.get('Nats-Msg-Id') });
    }
    return out;
  }

  it('publishes the results of one delay window as one message, and resolves after the stream stored it', async () => {
    const from = (await bus.jsm.streams.info('TERN_RESULTS')).state.last_seq + 1;
    const publisher = new ResultPublisher(bus, { maxResults: 64, delayMs: 50 });
    let settled = 0;
    const first = publisher.publish(result('j1')).then(() => settled++);
    await new Promise((r) => setTimeout(r, 20));
    const second = publisher.publish(result('j2')).then(() => settled++);
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(settled, 0, 'nothing acknowledged while the batch gathers');
    await Promise.all([first, second]);
    const msgs = await stored(from);
    assert.equal(msgs.length, 1, 'one message for both');
    assert.equal(msgs[0]!.subject, SUBJECTS.resultsBatch);
    assert.deepEqual(msgs[0]!.results.map((r) => r.jobId), ['j1', 'j2']);
    assert.equal(msgs[0]!.msgId, batchMsgId([result('j1'), result('j2')]));
  });

  it('sends a full batch at once and splits what is over maxResults', async () => {
    const from = (await bus.jsm.streams.info('TERN_RESULTS')).state.last_seq + 1;
    const publisher = new ResultPublisher(bus, { maxResults: 3, delayMs: 60_000 });
    const all = ['a', 'b', 'c', 'd'].map((j) => publisher.publish(result(j)));
    await Promise.all(all.slice(0, 3));
    await publisher.drain();
    await Promise.all(all);
    assert.deepEqual((await stored(from)).map((m) => m.results.map((r) => r.jobId)), [['a', 'b', 'c'], ['d']]);
  });

  it('a publish JetStream refuses fails each result of the batch', async () => {
    const refusing = { publish: () => Promise.reject(new Error('JetStream publish to tern.results.batch refused: maximum messages exceeded')) };
    const publisher = new ResultPublisher(refusing, { maxResults: 64, delayMs: 5 });
    const outcomes = await Promise.allSettled([publisher.publish(result('x')), publisher.publish(result('y'))]);
    assert.deepEqual(outcomes.map((o) => o.status), ['rejected', 'rejected']);
    assert.match(String((outcomes[0] as PromiseRejectedResult).reason), /maximum messages exceeded/);
  });

  it('message ids: one per set of jobs, so a republish is dropped and another batch is not', () => {
    assert.equal(batchMsgId([result('j1')]), 'result:j1', 'a single result keeps the per-job id');
    assert.equal(batchMsgId([result('j1'), result('j2')]), batchMsgId([result('j1'), result('j2')]));
    assert.notEqual(batchMsgId([result('j1'), result('j2')]), batchMsgId([result('j1'), result('j3')]));
    assert.notEqual(batchMsgId([result('j1'), result('j2')]), batchMsgId([result('j1')]));
  });
});
