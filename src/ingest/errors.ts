import { DatabaseError } from "sequelize";
import { sqlState } from "../db/sql-state.js";

/**
 * A retry named an external_id that is already stored for its source, but
 * with a different sender or content: the key was reused for another
 * message, and storing either silently would lose one of them. The answer
 * carries nothing of the stored message (not its id, not which field
 * differs): the caller may not be the one who sent it (docs/privacy.md).
 */
export class DuplicateConflictError extends Error {
  constructor() {
    super("external_id is already stored for this source for another message; send a new external_id for a new message");
  }
}

/**
 * A value the database refused to store: SQLSTATE class 22, "data exception"
 * (for example a NUL character, which JSON allows and PostgreSQL text does not).
 */
export function isDataError(error: unknown): boolean {
  return error instanceof DatabaseError && sqlState(error).startsWith("22");
}
