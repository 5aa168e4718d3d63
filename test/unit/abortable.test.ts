import { describe, expect, it } from "vitest";
import { abortable } from "../../src/abortable.js";

describe("abortable", () => {
  it("settles as the work does while the signal stays quiet", async () => {
    await expect(abortable(Promise.resolve(7), AbortSignal.timeout(1_000))).resolves.toBe(7);
    await expect(abortable(Promise.reject(new Error("no")), AbortSignal.timeout(1_000))).rejects.toThrow("no");
  });

  it("rejects with the signal's reason once it aborts, before work that never ends", async () => {
    const never = new Promise<never>(() => undefined);
    await expect(abortable(never, AbortSignal.timeout(10))).rejects.toMatchObject({ name: "TimeoutError" });
    const controller = new AbortController();
    controller.abort(new Error("cancelled"));
    await expect(abortable(never, controller.signal)).rejects.toThrow("cancelled");
  });
});
