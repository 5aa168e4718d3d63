import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";

/**
 * The feed's horizon, as an SQL expression of type xid8: events written by a
 * transaction below it are deliverable (docs/feed.md, "The horizon").
 *
 * It is the oldest transaction of the statement's own snapshot that is still
 * running and not known to belong to another database, or the snapshot's
 * xmax when there is none (or the reader's own transaction, when it has an
 * xid). A running transaction is known to belong to another database when a
 * backend connected to another database shows it as its `backend_xid`, or a
 * transaction prepared in another database has it. Everything else holds
 * the horizon, transactions hidden from this role included, so the rule can
 * only be as strict as `pg_snapshot_xmin`, never looser than correct. On a
 * standby, whose snapshots list no running xids, it is `pg_snapshot_xmin`.
 *
 * (pg_stat_get_activity is the function behind pg_stat_activity, without its
 * joins to the catalogs.) It must be evaluated in a statement whose snapshot
 * is taken before it reads the sessions: a statement of its own (not after another read of
 * pg_stat_activity in the same transaction, which would reuse that earlier
 * read). Every reader of the feed runs it as a single statement.
 */
export const FEED_HORIZON = `(SELECT CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(pg_current_snapshot()) ELSE least(
      pg_snapshot_xmax(pg_current_snapshot()),
      pg_current_xact_id_if_assigned(),
      (SELECT min(running) FROM pg_snapshot_xip(pg_current_snapshot()) AS running
       WHERE running::xid NOT IN (
         SELECT backend_xid FROM pg_stat_get_activity(NULL)
         WHERE backend_xid IS NOT NULL AND datid <> (SELECT datid FROM pg_stat_get_activity(pg_backend_pid()))
         UNION ALL
         SELECT transaction FROM pg_prepared_xacts WHERE database <> current_database())))
    END)`;

/**
 * Whether the horizon is sure to tell databases apart: "database" when this
 * role may see every session's details (superuser or pg_read_all_stats);
 * otherwise "database-where-visible": a running transaction whose database
 * pg_stat_activity does not show this role holds the feed back, as on the
 * whole cluster (PostgreSQL 15 shows backend_xid and datid to every role; a
 * server or proxy that hides them falls back to the cluster's horizon).
 */
export type HorizonScope = "database" | "database-where-visible";

/** The horizon's scope, as `/readyz` and the start-up log report it. */
export interface HorizonStatus {
  scope: HorizonScope;
  /** Why the scope may be the whole cluster; absent when it is the database. */
  reason?: string;
}

const SEES_ALL_SESSIONS = "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS sees_all";

/** Reads whether the service's role is sure to see which database every running transaction belongs to. */
export async function readHorizonStatus(sequelize: Sequelize): Promise<HorizonStatus> {
  const [row] = await sequelize.query<{ sees_all: boolean }>(SEES_ALL_SESSIONS, { type: QueryTypes.SELECT });
  return row?.sees_all
    ? { scope: "database" }
    : {
        scope: "database-where-visible",
        reason:
          "the database role lacks pg_read_all_stats: a transaction in another database whose backend_xid pg_stat_activity hides from this role holds the feed back as before (GRANT pg_read_all_stats TO the role to be sure)",
      };
}

/** The horizon's status, read at most every ten minutes (a GRANT shows within that), so probes stay cheap. */
export class FeedHorizon {
  private last: { at: number; status: Promise<HorizonStatus> } | undefined;

  constructor(private readonly sequelize: Sequelize) {}

  /** The current status; rejects when the database does not answer. */
  status(): Promise<HorizonStatus> {
    if (!this.last || Date.now() - this.last.at > 600_000) {
      const last = { at: Date.now(), status: readHorizonStatus(this.sequelize) };
      last.status.catch(() => this.last === last && (this.last = undefined));
      this.last = last;
    }
    return this.last.status;
  }
}
