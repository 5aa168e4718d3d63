/**
 * The value of one series in Prometheus' text format: the first sample named
 * `name` whose labels include every pair of `labels`. Undefined when there is
 * none, so a series that should exist and does not fails an assertion instead
 * of reading as 0; a counter not yet counted reads `?? 0` where that is meant.
 */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const present = match[2]?.split(/,(?=[a-zA-Z_][a-zA-Z0-9_]*=")/) ?? [];
    if (wanted.every((pair) => present.includes(pair))) return Number(match[3]);
  }
  return undefined;
}

/** GETs a server's /metrics and reads one series from it (see `metricValue`). */
export async function readMetric(baseUrl: string, name: string, labels: Record<string, string> = {}, headers: Record<string, string> = {}): Promise<number | undefined> {
  const response = await fetch(`${baseUrl}/metrics`, { headers });
  if (response.status !== 200) throw new Error(`GET /metrics answered ${response.status}`);
  return metricValue(await response.text(), name, labels);
}
