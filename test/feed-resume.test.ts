import { randomInt } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { feedClient, feedTransports, ingestClient, listAllIds, openWatch, type OpenWatch } from "./support/feed.js";
import { startTestServer, type TestServer } from "./support/server.js";
import { startTcpProxy } from "./support/tcp-proxy.js";
import { sleep, waitFor } from "./support/wait.js";

let database: TestDatabase | undefined;
const servers: TestServer[] = [];
afterAll(async () => {
  for (const server of servers) await server.server.close(1_000).catch(() => undefined);
  await database?.close();
});


describe(`resuming a watch (${databaseKind})`, () => {
  it.each(Object.keys(feedTransports))(
    "over %s: streams cut by the client, a server restart and a killed connection, resumed from their last token, deliver exactly a full listing",
    async (name) => {
      database ??= await createTestDatabase();
      const db = database;
      const start = async () => {
        const server = await startTestServer(db, { feed: { checkpointIntervalMs: 150 } });
        servers.push(server);
        return server;
      };
      let server = await start();
      // The listing so far (earlier transports' runs may have filled several pages), and the token
      // to watch from right after its last page.
      const before: string[] = [];
      let page;
      let pageToken = "";
      do {
        page = await feedClient(feedTransports["gRPC"](server.baseUrl)).listIngestEvents({ pageSize: 1000, pageToken });
        before.push(...page.ingestEvents.map((event) => event.id));
        pageToken = page.nextPageToken;
      } while (pageToken);

      // Messages keep arriving through whichever server is up.
      let ingesting = true;
      const ingest = (async () => {
        for (let i = 0; ingesting; i++) {
          await ingestClient(feedTransports["gRPC"](server.baseUrl))
            .ingestMessage({ source: "web", senderId: `${name}-${i}`, content: "x" })
            .catch(() => undefined); // refused while the server restarts
          await sleep(randomInt(2, 15));
        }
      })();

      const received: string[] = [...before];
      let token = page.resumeToken;
      let watch: OpenWatch;
      const open = (baseUrl: string) => {
        const request = { resumeToken: token };
        watch = openWatch(feedClient(feedTransports[name](baseUrl)), request, (response) => {
          if (response.ingestEvent) received.push(response.ingestEvent.id);
          token = response.resumeToken;
        });
      };
      const someEvents = async () => {
        const target = received.length + randomInt(3, 30);
        await waitFor(() => received.length >= target);
      };

      // 1. The client cancels, at random points, and resumes.
      open(server.baseUrl);
      for (let cut = 0; cut < 3; cut++) {
        await someEvents();
        watch!.cancel();
        expect(await watch!.ended).toBeUndefined();
        open(server.baseUrl);
      }

      // 2. The server restarts: the stream ends with Unavailable; resume on the new one.
      await someEvents();
      await server.server.close(1_000);
      expect(String(await watch!.ended)).toMatch(/unavailable|shutting down/i);
      server = await start();
      open(server.baseUrl);

      // 3. A proxy between client and server kills the connection mid-stream.
      const proxy = await startTcpProxy({ host: "127.0.0.1", port: Number(new URL(server.baseUrl).port) });
      try {
        await someEvents();
        watch!.cancel();
        open(`http://127.0.0.1:${proxy.port}`);
        for (let cut = 0; cut < 2; cut++) {
          await someEvents();
          proxy.cut();
          expect(await watch!.ended).toBeDefined();
          proxy.restore();
          open(`http://127.0.0.1:${proxy.port}`);
        }
        await someEvents();
      } finally {
        ingesting = false;
        await ingest;
        const listing = () => listAllIds(feedClient(feedTransports["gRPC"](server.baseUrl)));
        let all = await listing();
        await waitFor(() => received.length >= all.length, 20_000).catch(() => undefined);
        all = await listing();
        await sleep(300); // nothing more arrives
        watch!.cancel();
        await proxy.close();
        expect(received).toEqual(all);
        expect(all.length - before.length).toBeGreaterThan(50);
      }
    },
    // Two server starts and a few hundred ingests: slow on the embedded database of a busy machine.
    240_000,
  );
});
