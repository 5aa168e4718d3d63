import { QueryTypes } from "sequelize";
import type { Model, ModelStatic } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Contact } from "../src/db/models/Contact.js";
import { Deal } from "../src/db/models/Deal.js";
import { IngestEvent, INGEST_EVENT_KINDS, INGEST_EVENT_STATUSES } from "../src/db/models/IngestEvent.js";
import { WhatsappUserLink } from "../src/db/models/WhatsappUserLink.js";
import { PrivacyRequest, PRIVACY_REQUEST_KINDS, PRIVACY_REQUEST_STATES } from "../src/db/models/PrivacyRequest.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";

// The models are what queries through Sequelize trust about the tables; the
// migrations are what the tables are. Both are described here in one form,
// from the model attributes and from pg_catalog, and must be equal.

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.close();
});

interface Description {
  columns: Record<string, { type: string; nullable: boolean; default: string | null }>;
  indexes: Record<string, { unique: boolean; columns: string[] }>;
  foreignKeys: Record<string, { references: string; onDelete: string; onUpdate: string }>;
}

const ACTIONS: Record<string, string> = { a: "NO ACTION", r: "RESTRICT", c: "CASCADE", n: "SET NULL", d: "SET DEFAULT" };

/** What the migrated database holds for `table`. */
async function described(table: string): Promise<Description> {
  const query = <T extends object>(sql: string) => database.sequelize.query<T>(sql, { bind: [table], type: QueryTypes.SELECT });
  const columns = await query<{ name: string; type: string; nullable: boolean; default: string | null }>(`
    SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, NOT a.attnotnull AS nullable,
      pg_get_expr(d.adbin, d.adrelid) AS default
    FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped`);
  const indexes = await query<{ name: string; unique: boolean; columns: string[] }>(`
    SELECT c.relname AS name, i.indisunique AS unique,
      array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n)::text[] AS columns
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = $1::regclass AND NOT i.indisprimary`);
  const foreignKeys = await query<{ column: string; references: string; on_delete: string; on_update: string }>(`
    SELECT a.attname AS column, format('%s.%s', r.relname, ra.attname) AS references, c.confdeltype AS on_delete, c.confupdtype AS on_update
    FROM pg_constraint c
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
    JOIN pg_class r ON r.oid = c.confrelid
    JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1]
    WHERE c.conrelid = $1::regclass AND c.contype = 'f'`);
  return {
    columns: Object.fromEntries(columns.map((c) => [c.name, { type: c.type, nullable: c.nullable, default: c.default }])),
    indexes: Object.fromEntries(indexes.map((i) => [i.name, { unique: i.unique, columns: i.columns }])),
    foreignKeys: Object.fromEntries(
      foreignKeys.map((f) => [f.column, { references: f.references, onDelete: ACTIONS[String(f.on_delete)], onUpdate: ACTIONS[String(f.on_update)] }]),
    ),
  };
}

/** PostgreSQL's name for a Sequelize data type, as format_type() prints it. */
function typeName(type: string | { key: string; options?: { precision?: number; scale?: number }; type?: { key: string } }): string {
  // A type Sequelize has no name for (xid8) is given as PostgreSQL's own.
  if (typeof type === "string") return type;
  switch (type.key) {
    case "BIGINT":
      return "bigint";
    case "INTEGER":
      return "integer";
    case "ARRAY":
      return `${typeName(type.type!)}[]`;
    case "UUID":
      return "uuid";
    case "TEXT":
      return "text";
    case "JSONB":
      return "jsonb";
    case "DATE":
      return "timestamp with time zone";
    case "DECIMAL":
      return `numeric(${type.options?.precision},${type.options?.scale})`;
    default:
      return `unmapped ${type.key}`;
  }
}

/** A model default as PostgreSQL prints the column's default expression. */
function defaultExpression(value: unknown, type: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === "object" && "val" in value) return String(value.val); // literal()
  if (typeof value === "object" && "fn" in value) return `${String(value.fn)}()`; // fn()
  if (typeof value === "number") return String(value); // PostgreSQL prints a numeric constant bare
  if (Array.isArray(value) && value.length === 0) return `ARRAY[]::${type}`;
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return `'${text.replaceAll("'", "''")}'::${type}`;
}

/** What the model says about its table. */
function modelled(model: ModelStatic<Model>): Description {
  const attributes = Object.values(model.getAttributes());
  const columns: Description["columns"] = {};
  const foreignKeys: Description["foreignKeys"] = {};
  for (const attribute of attributes) {
    const field = attribute.field!;
    const type = typeName(attribute.type);
    columns[field] = {
      type,
      nullable: attribute.primaryKey ? false : attribute.allowNull !== false,
      default: defaultExpression(attribute.defaultValue, type),
    };
    const references = attribute.references as { model: string | { tableName: string }; key: string } | undefined;
    if (references) {
      const table = typeof references.model === "string" ? references.model : references.model.tableName;
      foreignKeys[field] = { references: `${table}.${references.key}`, onDelete: String(attribute.onDelete), onUpdate: String(attribute.onUpdate) };
    }
  }
  const indexes = Object.fromEntries(
    (model.options.indexes ?? []).map((index) => [index.name!, { unique: index.unique === true, columns: (index.fields ?? []).map(String) }]),
  );
  return { columns, indexes, foreignKeys };
}

describe(`models against the migrated schema (${databaseKind})`, () => {
  const models = {
    crm_contacts: Contact,
    crm_deals: Deal,
    crm_ingest_events: IngestEvent,
    crm_whatsapp_user_links: WhatsappUserLink,
    crm_privacy_requests: PrivacyRequest,
  } as unknown as Record<string, ModelStatic<Model>>;
  for (const [table, model] of Object.entries(models)) {
    it(`${model.name} describes ${table} exactly: columns, types, nullability, defaults, indexes, foreign keys`, async () => {
      expect(model.getTableName()).toBe(table);
      expect(modelled(model)).toEqual(await described(table));
    });
  }

  it("IngestEvent allows exactly the statuses the database's check constraint allows", async () => {
    const [check] = await database.sequelize.query<{ definition: string }>(
      "SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint WHERE conname = 'crm_ingest_events_status_check'",
      { type: QueryTypes.SELECT },
    );
    const allowed = [...check.definition.matchAll(/'([^']+)'::text/g)].map((match) => match[1]);
    expect(allowed.sort()).toEqual([...INGEST_EVENT_STATUSES].sort());
    expect(IngestEvent.getAttributes().status.validate).toEqual({ isIn: [INGEST_EVENT_STATUSES] });
  });

  it("IngestEvent allows exactly the kinds the database's check constraint allows", async () => {
    const [check] = await database.sequelize.query<{ definition: string }>(
      "SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint WHERE conname = 'crm_ingest_events_kind_check'",
      { type: QueryTypes.SELECT },
    );
    const allowed = [...check.definition.matchAll(/'([^']+)'::text/g)].map((match) => match[1]);
    expect(allowed.sort()).toEqual([...INGEST_EVENT_KINDS].sort());
    expect(IngestEvent.getAttributes().kind.validate).toEqual({ isIn: [INGEST_EVENT_KINDS] });
  });

  it("PrivacyRequest allows exactly the kinds and states the database's check constraints allow", async () => {
    for (const [constraint, values, attribute] of [
      ["crm_privacy_requests_kind_check", PRIVACY_REQUEST_KINDS, "kind"],
      ["crm_privacy_requests_state_check", PRIVACY_REQUEST_STATES, "state"],
    ] as const) {
      const [check] = await database.sequelize.query<{ definition: string }>(
        "SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint WHERE conname = $1",
        { bind: [constraint], type: QueryTypes.SELECT },
      );
      const allowed = [...check.definition.matchAll(/'([^']+)'::text/g)].map((match) => match[1]);
      expect(allowed.sort()).toEqual([...values].sort());
      expect(PrivacyRequest.getAttributes()[attribute].validate).toEqual({ isIn: [values] });
    }
  });

  it("creates and reads rows through the models, with the database's defaults", async () => {
    const contact = await Contact.create({ whatsappId: "5511900009999" });
    const event = await IngestEvent.create({ source: "whatsapp", senderId: "5511900009999", content: "x", contactId: contact.id, status: "LINKED" });
    const read = await IngestEvent.findByPk(event.id);
    expect(read).toMatchObject({ contactId: contact.id, metadata: {}, status: "LINKED", externalId: null, kind: "MESSAGE" });
    expect(read!.createdAt).toBeInstanceOf(Date);
    expect(contact.id).toMatch(/^[0-9a-f-]{36}$/);
  });
});
