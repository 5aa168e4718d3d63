import { Gauge, type Registry } from "prom-client";
import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";

/**
 * Erasure and retention progress, read from the job table when scraped, so
 * every replica reports the same figures whichever replica runs a job: jobs
 * still running, events erased (by all jobs, running ones included), and the
 * age of the oldest running job, which an alert can watch for a job that no
 * longer moves.
 */
export function registerPrivacyMetrics(registry: Registry, sequelize: Sequelize): void {
  const registers = [registry];
  const prefix = "aurora_ingest_privacy_";
  let reading: Promise<JobFigures[] | undefined> | undefined;
  // Every gauge comes from one query per scrape.
  const read = () =>
    (reading ??= sequelize
      .query<JobFigures>(JOB_FIGURES, { type: QueryTypes.SELECT })
      .catch(() => undefined)
      .finally(() => setImmediate(() => (reading = undefined))));
  const byKind = (figure: "running" | "events_erased") =>
    async function collect(this: Gauge) {
      const rows = await read();
      for (const kind of KINDS) {
        const row = rows?.find((candidate) => candidate.kind === kind);
        this.set({ kind }, rows ? Number(row?.[figure] ?? 0) : NaN);
      }
    };
  new Gauge({
    name: `${prefix}jobs_running`,
    help: "Erasure and retention jobs not yet finished, by kind (ERASURE, RETENTION).",
    labelNames: ["kind"],
    registers,
    collect: byKind("running"),
  });
  new Gauge({
    name: `${prefix}events_erased`,
    help: "Events erased by erasure and retention jobs so far, running ones included, by kind.",
    labelNames: ["kind"],
    registers,
    collect: byKind("events_erased"),
  });
  new Gauge({
    name: `${prefix}oldest_running_job_seconds`,
    help: "Age of the oldest erasure or retention job not yet finished (0 when none runs).",
    registers,
    async collect() {
      const rows = await read();
      this.set(rows ? Math.max(0, ...rows.map((row) => Number(row.oldest_running_seconds))) : NaN);
    },
  });
}

const KINDS = ["ERASURE", "RETENTION"] as const;

interface JobFigures {
  kind: string;
  running: string;
  events_erased: string;
  oldest_running_seconds: string;
}

const JOB_FIGURES = `
  SELECT job.kind,
    count(*) FILTER (WHERE job.state = 'RUNNING') AS running,
    coalesce(sum(job.events_erased), 0) AS events_erased,
    coalesce(extract(epoch FROM clock_timestamp() - min(request.started_at) FILTER (WHERE job.state = 'RUNNING')), 0) AS oldest_running_seconds
  FROM crm_privacy_erasures AS job JOIN crm_privacy_requests AS request ON request.id = job.request_id
  GROUP BY job.kind`;
