/** The SQLSTATE of a database error (`23505`, `40P01`, …), or "" for any other error. */
export function sqlState(error: unknown): string {
  const code = (error as { original?: { code?: unknown } } | undefined)?.original?.code;
  return typeof code === "string" ? code : "";
}
