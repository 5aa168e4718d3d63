/** What the plain route answered: status, parsed body (event_id, contact_id, … or code and message) and request id. */
export interface PlainAnswer {
  status: number;
  body: any;
  requestId: string | null;
}

/** POSTs JSON (or raw text, for malformed requests) to a path: the status, parsed body and request id. */
export async function postJson(baseUrl: string, path: string, body: unknown, headers: Record<string, string> = {}): Promise<PlainAnswer> {
  const response = await fetch(baseUrl + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined, requestId: response.headers.get("x-request-id") };
}

/**
 * POSTs one message to the plain JSON route (/ingest/message), as curl and
 * webhooks send it, in its snake_case (`sender_id`, `external_id`), exactly as
 * given; raw text is sent as it is, for malformed requests.
 */
export function postMessage(baseUrl: string, body: unknown, headers: Record<string, string> = {}): Promise<PlainAnswer> {
  return postJson(baseUrl, "/ingest/message", body, headers);
}
