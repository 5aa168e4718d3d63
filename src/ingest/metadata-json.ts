const encoded = new WeakMap<object, string>();

/**
 * A message's metadata as JSON text, encoded once per request: validation
 * measures it against the size limit and the ingest command stores it.
 */
export function metadataJson(metadata: object): string {
  let json = encoded.get(metadata);
  if (json === undefined) encoded.set(metadata, (json = JSON.stringify(metadata)));
  return json;
}
