import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

/** PEM files made for one test file: a CA, a server certificate for 127.0.0.1/localhost, and client certificates. */
export interface TestCertificates {
  dir: string;
  /** Paths of the PEM files, for child processes. */
  files: { ca: string; serverCert: string; serverKey: string; clientCert: string; clientKey: string };
  ca: Buffer;
  server: { cert: Buffer; key: Buffer };
  /** Signed by `ca`. */
  client: { cert: Buffer; key: Buffer };
  /** Signed by a CA nobody trusts. */
  stranger: { cert: Buffer; key: Buffer };
  remove(): void;
}

/** Creates the certificates with the `openssl` command line tool (short-lived EC keys, in a temporary folder). */
export function createTestCertificates(): TestCertificates {
  const dir = mkdtempSync(path.join(os.tmpdir(), "aurora-certs-"));
  const file = (name: string) => path.join(dir, name);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });

  const makeCa = (name: string) =>
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
      "-subj", `/CN=${name}`, "-keyout", `${name}.key`, "-out", `${name}.pem`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  const makeLeaf = (name: string, ca: string, extensions: string) => {
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-subj", `/CN=${name}`, "-keyout", `${name}.key`, "-out", `${name}.csr`);
    writeFileSync(file(`${name}.ext`), extensions);
    openssl("x509", "-req", "-in", `${name}.csr`, "-CA", `${ca}.pem`, "-CAkey", `${ca}.key`, "-CAcreateserial",
      "-days", "2", "-extfile", `${name}.ext`, "-out", `${name}.pem`);
  };

  makeCa("ca");
  makeCa("stranger-ca");
  makeLeaf("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  makeLeaf("client", "ca", "extendedKeyUsage=clientAuth\n");
  makeLeaf("stranger", "stranger-ca", "extendedKeyUsage=clientAuth\n");

  const read = (name: string) => readFileSync(file(name));
  return {
    dir,
    files: { ca: file("ca.pem"), serverCert: file("server.pem"), serverKey: file("server.key"), clientCert: file("client.pem"), clientKey: file("client.key") },
    ca: read("ca.pem"),
    server: { cert: read("server.pem"), key: read("server.key") },
    client: { cert: read("client.pem"), key: read("client.key") },
    stranger: { cert: read("stranger.pem"), key: read("stranger.key") },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
