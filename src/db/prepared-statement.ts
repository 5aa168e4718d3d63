import { randomBytes } from "node:crypto";
import pg from "pg";
import { DatabaseError, UniqueConstraintError } from "sequelize";
import type { Sequelize } from "sequelize-typescript";

/** A statement PostgreSQL parses and plans once per connection, then runs with new values. */
export interface PreparedStatement {
  /** Unique per text: a connection remembers what it prepared under each name. */
  name: string;
  text: string;
}

// Every connection prepares under names of its own: the embedded database
// serves all connections, from every process that reaches its socket, from
// one session, where a second connection preparing the same name would be
// refused.
const processTag = randomBytes(4).toString("hex");
const connectionNumbers = new WeakMap<pg.ClientBase, number>();
let connectionCount = 0;

// That session also keeps what closed connections prepared, so the embedded
// database's own pool runs the statements unprepared.
const unprepared = new WeakSet<Sequelize>();

/** Makes `runPrepared` send its statements unnamed (parsed on every call) on this database. */
export function withoutPreparedStatements(sequelize: Sequelize): void {
  unprepared.add(sequelize);
}

/**
 * Runs a prepared statement on a connection from Sequelize's pool (so one
 * pool, sized by DATABASE_POOL_MAX, still holds every connection) and returns
 * its rows. For the hot path only: Sequelize cannot prepare statements, so
 * through it PostgreSQL would parse and plan the statement on every call, and
 * Sequelize adds its own work per query. Database errors come back as
 * Sequelize's errors, as from `sequelize.query` (a unique violation as
 * UniqueConstraintError, anything else the server refused as DatabaseError),
 * so they are handled and mapped to Connect codes the same way.
 */
export async function runPrepared<Row extends pg.QueryResultRow>(
  sequelize: Sequelize,
  statement: PreparedStatement,
  values: unknown[],
): Promise<Row[]> {
  const connections = sequelize.connectionManager;
  // The postgres dialect's pooled connections are `pg` clients.
  const client = (await connections.getConnection({ type: "write" })) as pg.ClientBase;
  let result: pg.QueryResult<Row>;
  try {
    if (unprepared.has(sequelize)) {
      result = await client.query<Row>({ text: statement.text, values });
    } else {
      let number = connectionNumbers.get(client);
      if (number === undefined) connectionNumbers.set(client, (number = ++connectionCount));
      result = await client.query<Row>({ name: `${statement.name}_${processTag}_${number}`, text: statement.text, values });
    }
  } catch (error) {
    if (!(error instanceof pg.DatabaseError)) {
      // No answer from the server: the connection is not to be trusted again.
      await connections.destroyConnection(client).catch(() => undefined);
      throw error;
    }
    connections.releaseConnection(client);
    const parent = Object.assign(error, { sql: statement.text, parameters: values });
    throw error.code === "23505" ? new UniqueConstraintError({ parent, message: error.message }) : new DatabaseError(parent);
  }
  connections.releaseConnection(client);
  return result.rows;
}
