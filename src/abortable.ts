/**
 * Settles as `promise` does, or rejects with the signal's reason as soon as
 * it aborts: for work that cannot itself be cancelled (a driver's query, a
 * body's next chunk), bounded by `AbortSignal.timeout` or a request's signal.
 */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const aborted = () => reject(signal.reason as Error);
    signal.addEventListener("abort", aborted, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", aborted));
  });
}
