// The metric names a PromQL expression reads, without a PromQL parser: string
// literals, label matchers ({...}), grouping label lists (by, without, on,
// ignoring, group_left, group_right) and range/offset durations are skipped;
// what remains is functions (a name before "("), keywords, numbers and the
// metric names.
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan', 'atan2']);
// Aggregation operators may be followed by `by (...)` before their parenthesis.
const AGGREGATIONS = new Set(['sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile', 'limitk', 'limit_ratio']);
const LABEL_LISTS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);

export function metricNames(expr: string): string[] {
  const names = new Set<string>();
  let i = 0;
  const n = expr.length;
  const skipSpace = () => {
    while (i < n && /\s/.test(expr[i]!)) i++;
  };
  const skipBalanced = (open: string, close: string) => {
    // expr[i] is `open`; strings inside are skipped whole
    let depth = 0;
    while (i < n) {
      const c = expr[i]!;
      if (c === '"' || c === "'" || c === '`') {
        skipString();
        continue;
      }
      if (c === open) depth++;
      else if (c === close && --depth === 0) {
        i++;
        return;
      }
      i++;
    }
    throw new Error(`unbalanced ${open}${close} in: ${expr}`);
  };
  const skipString = () => {
    const q = expr[i]!;
    i++;
    while (i < n && expr[i] !== q) i += expr[i] === '\\' && q !== '`' ? 2 : 1;
    if (i >= n) throw new Error(`unterminated string in: ${expr}`);
    i++;
  };
  while (i < n) {
    const c = expr[i]!;
    if (c === '"' || c === "'" || c === '`') {
      skipString();
    } else if (c === '{') {
      skipBalanced('{', '}');
    } else if (c === '[') {
      skipBalanced('[', ']');
    } else if (/[0-9.]/.test(c)) {
      // a number or a duration (5m, 1h30m, 1e3)
      while (i < n && /[0-9a-zA-Z.+]/.test(expr[i]!) && !(expr[i] === '+' && !/[eE]/.test(expr[i - 1]!))) i++;
    } else if (/[a-zA-Z_:]/.test(c)) {
      const start = i;
      while (i < n && /[a-zA-Z0-9_:]/.test(expr[i]!)) i++;
      const word = expr.slice(start, i);
      skipSpace();
      const lower = word.toLowerCase();
      if (LABEL_LISTS.has(lower)) {
        if (expr[i] === '(') skipBalanced('(', ')');
      } else if (lower === 'offset') {
        // the duration follows
      } else if (AGGREGATIONS.has(lower) || (expr[i] === '(' && !KEYWORDS.has(lower))) {
        // a function or aggregation; `sum by (x) (...)` is handled by LABEL_LISTS
      } else if (!KEYWORDS.has(lower)) {
        names.add(word);
      }
    } else {
      i++;
    }
  }
  return [...names];
}
