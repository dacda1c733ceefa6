// Which route (next hop) a recipient domain takes, one rule for every service
// that reads the route table: the queue (jobs carry their route) and delivery
// (recipient verification asks the same next hop a job would reach).
import type { Route } from './gen/tern/v1/queue';

/** The route of a destination: the exact domain, then the closest parent ".example.com" entry, then "*". */
export function matchRoute(routes: ReadonlyMap<string, Route>, destination: string): Route | undefined {
  const exact = routes.get(destination);
  if (exact) return exact;
  let d = destination;
  for (let dot = d.indexOf('.'); dot >= 0; dot = d.indexOf('.')) {
    d = d.slice(dot + 1);
    const parent = routes.get(`.${d}`);
    if (parent) return parent;
  }
  return routes.get('*');
}
