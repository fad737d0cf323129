// The bench's @tus/server peer: @tus/server + @tus/file-store as their README starts
// them (one Node process, the stock http server), pinned by bench/tus-node's lock file.
//
//     node bench/tus_server.mjs PORT DATA_DIR
//
// Node's http server ends a request whose whole body takes longer than requestTimeout
// (300 s by default); the capacity workload holds its bodies for less than that.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "tus-node", "package.json"));
const { Server } = await import(require.resolve("@tus/server"));
const { FileStore } = await import(require.resolve("@tus/file-store"));

const [port, directory] = process.argv.slice(2);
const server = new Server({
  path: "/files",
  relativeLocation: true,
  datastore: new FileStore({ directory }),
});
server.listen({ host: "127.0.0.1", port: Number(port), backlog: 4096 });
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
