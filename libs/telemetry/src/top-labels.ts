// Bounded label values for per-destination metrics: a destination gets its
// own label once it is certainly among the N busiest seen by this process
// (and has at least MIN_VOLUME); the rest share "other". Volumes are
// estimated with the Space-Saving algorithm (Metwally et al., 2005) over 4N
// counters, so memory is O(N) whatever the number of destinations, a
// destination that becomes busy takes its place in the top N, and the long
// tail never creates a series of its own.
export const OTHER_LABEL = 'other';
const MIN_VOLUME = 10;

interface Estimate {
  count: number;
  /** Over-estimate inherited from the evicted key (Space-Saving's error bound). */
  error: number;
}

export class TopLabels {
  private readonly counts = new Map<string, Estimate>();
  private readonly capacity: number;
  /** Estimated count of the N-th busiest key when last computed. */
  private threshold = MIN_VOLUME;
  private updatesSinceThreshold = 0;

  constructor(readonly topN: number) {
    this.capacity = Math.max(4 * topN, 16);
  }

  /** Counts `weight` for `key` and returns the label to use for it now. */
  label(key: string, weight = 1): string {
    if (this.topN <= 0) return OTHER_LABEL;
    let e = this.counts.get(key);
    if (e) e.count += weight;
    else if (this.counts.size < this.capacity) this.counts.set(key, (e = { count: weight, error: 0 }));
    else {
      let minKey = '';
      let min = Infinity;
      for (const [k, c] of this.counts) if (c.count < min) [minKey, min] = [k, c.count];
      this.counts.delete(minKey);
      this.counts.set(key, (e = { count: min + weight, error: min }));
    }
    if (++this.updatesSinceThreshold >= 16) this.recomputeThreshold();
    return e.count - e.error >= this.threshold ? key : OTHER_LABEL;
  }

  /** Label for `key` without counting it (results of what was counted at enqueue, gauges). */
  peek(key: string): string {
    const e = this.counts.get(key);
    return this.topN > 0 && e && e.count - e.error >= this.threshold ? key : OTHER_LABEL;
  }

  private recomputeThreshold(): void {
    this.updatesSinceThreshold = 0;
    const sorted = [...this.counts.values()].map((e) => e.count).sort((a, b) => b - a);
    this.threshold = Math.max(MIN_VOLUME, sorted[this.topN - 1] ?? 0);
  }
}

/** A protobuf enum value as a metric label: `MESSAGE_ORIGIN_SMTP` with prefix `MESSAGE_ORIGIN_` is `smtp`. */
export function enumLabel(name: string | undefined, prefix: string): string {
  if (!name) return 'unknown';
  return (name.startsWith(prefix) ? name.slice(prefix.length) : name).toLowerCase();
}
