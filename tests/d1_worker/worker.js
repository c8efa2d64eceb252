// D1's REST API answered by D1's own engine: the D1 binding (env.DB) of the pinned wrangler's
// workerd, on loopback. The tests point sessionctl's --remote target here, so what runs the SQL
// is the engine D1 runs on, not a re-implementation of its rules.
//
//   POST /client/v4/accounts/{account}/d1/database/{database}/query   {"sql", "params"} | {"batch": [...]}
//   POST /client/v4/accounts/{account}/d1/database/{database}/raw     the same, rows as {columns, rows}
//   GET  .../time_travel/bookmark?timestamp=<ISO 8601>                 a bookmark (stand-in, see below)
//   POST .../time_travel/restore?bookmark=<bookmark>                   echoes it (stand-in, see below)
//   GET  /__stats, POST /__stats/reset                                 what was served (test hooks)
//
// /__stats (not itself counted, no token): totals of requests, request_bytes (bodies),
// response_bytes, rows (returned), statements (sql strings or batch items); counts by_path
// ("POST /client/v4/..."), by_endpoint ("query", "raw", "time_travel/bookmark", ...) and
// by_status; the bookmarks restored; and a log entry per request with each of those and the SQL
// texts. Of the headers only the User-Agent, so never the token.
//
// What the binding gives, and so what this answers (checked against wrangler 4.86.0):
// - {"sql"} is ONE prepared statement: env.DB.prepare(sql).bind(...params).all(). A string of
//   several `;`-separated statements runs whole and atomically, but the binding returns only the
//   LAST statement's rows, with `changes` summed over all of them: the result list has ONE entry,
//   where D1's REST API lists one entry per statement. Only the last statement may take params.
// - {"batch"} is env.DB.batch([...]): one transaction, one result entry per batch item (a
//   multi-statement item still gives one entry, as above). Any failure rolls all of it back.
// - /raw gets the same objects, turned into {columns, rows}: two columns of one name collapse
//   into one, and a result without rows has no columns (the binding's objects carry no more).
// - Errors are the engine's message without the binding's "D1_ERROR: " prefix, HTTP 400, code 7500
//   (e.g. "no such table: nope: SQLITE_ERROR": no " [code: 7500]" in the message itself).
// - meta is the engine's: `changes` is the difference of total_changes(), so rows a trigger
//   changes count too; `served_by` is "miniflare.db"; `size_after` is the file's size.
// - A `{"sql"}` ending in a comment after its last `;` fails: "SQL code did not contain a statement."

const ROUTE = /^\/client\/v4\/accounts\/([^/]+)\/d1\/database\/([^/]+)\/(query|raw|time_travel\/bookmark|time_travel\/restore)$/;
const METHOD = { query: "POST", raw: "POST", "time_travel/bookmark": "GET", "time_travel/restore": "POST" };

// Module state lives as long as the isolate, which `wrangler dev` keeps for the whole run
// (it is rebuilt only when the worker's files change): enough for a per-module test server.
let stats = freshStats();

function freshStats() {
  return { requests: 0, request_bytes: 0, response_bytes: 0, rows: 0, statements: 0,
           by_path: {}, by_endpoint: {}, by_status: {}, restores: [], log: [] };
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function envelope(result, errors = []) {
  return { success: errors.length === 0, errors, messages: [], result };
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/__stats" && request.method === "GET") {
      return Response.json(stats);
    }
    if (url.pathname === "/__stats/reset" && request.method === "POST") {
      stats = freshStats();
      return Response.json({ reset: true });
    }

    const body = new Uint8Array(await request.arrayBuffer());
    const record = { method: request.method, path: url.pathname, endpoint: null, status: 0,
                     request_bytes: body.byteLength, response_bytes: 0, statements: 0, rows: 0, sql: [],
                     user_agent: request.headers.get("user-agent") };
    // No connection reuse here: workerd hides the TCP connection and drops the Connection
    // header, so tests/d1_worker_server.py counts connections in a proxy in front of it.
    let status = 200;
    let payload;
    try {
      payload = envelope(await serve(request, url, body, env, record));
    } catch (error) {
      if (error instanceof ApiError) {
        status = error.status;
        payload = envelope(null, [{ code: error.code, message: error.message }]);
      } else {
        status = 500;
        payload = envelope(null, [{ code: 7500, message: `worker failure: ${error && error.message}` }]);
      }
    }
    const text = JSON.stringify(payload);
    record.status = status;
    record.response_bytes = new TextEncoder().encode(text).byteLength;
    count(record);
    return new Response(text, { status, headers: { "content-type": "application/json" } });
  },
};

function count(record) {
  stats.requests += 1;
  stats.request_bytes += record.request_bytes;
  stats.response_bytes += record.response_bytes;
  stats.rows += record.rows;
  stats.statements += record.statements;
  const key = `${record.method} ${record.path}`;
  stats.by_path[key] = (stats.by_path[key] || 0) + 1;
  const endpoint = record.endpoint || "other";
  stats.by_endpoint[endpoint] = (stats.by_endpoint[endpoint] || 0) + 1;
  stats.by_status[record.status] = (stats.by_status[record.status] || 0) + 1;
  stats.log.push(record);
}

async function serve(request, url, body, env, record) {
  const match = ROUTE.exec(url.pathname);
  if (match === null) {
    throw new ApiError(404, 7000, "No route for that URI");
  }
  const [, accountId, databaseId, endpoint] = match;
  record.endpoint = endpoint;
  if (request.method !== METHOD[endpoint]) {
    throw new ApiError(405, 7001, "Method not allowed");
  }
  // A TOKEN that was never configured refuses everything rather than accepting "Bearer undefined".
  const authorization = request.headers.get("authorization");
  if (!env.TOKEN || authorization !== `Bearer ${env.TOKEN}`) {
    throw new ApiError(401, 10000, "Authentication error");
  }
  if (accountId !== env.ACCOUNT_ID || databaseId !== env.DATABASE_ID) {
    throw new ApiError(404, 7404, "database not found");
  }
  if (endpoint === "time_travel/bookmark") {
    return { bookmark: await bookmarkAt(url.searchParams.get("timestamp")) };
  }
  if (endpoint === "time_travel/restore") {
    return restore(url.searchParams.get("bookmark"));
  }
  return runSql(env, parseBody(body), endpoint === "raw", record);
}

function parseBody(bytes) {
  let body;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new ApiError(400, 7400, "Malformed request body: not JSON");
  }
  const malformed = () => new ApiError(400, 7400,
    "Malformed request body: expected a JSON object with sql (string) and params (list), or batch (list of those)");
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw malformed();
  const items = Array.isArray(body.batch) ? body.batch : typeof body.sql === "string" ? [body] : null;
  if (items === null) throw malformed();
  for (const item of items) {
    if (item === null || typeof item !== "object" || typeof item.sql !== "string") throw malformed();
    if (item.params !== undefined && item.params !== null && !Array.isArray(item.params)) throw malformed();
  }
  return { batch: Array.isArray(body.batch), items };
}

async function runSql(env, { batch, items }, raw, record) {
  record.sql = items.map((item) => item.sql);
  record.statements = items.length;
  let answers;
  try {
    const statements = items.map((item) => env.DB.prepare(item.sql).bind(...(item.params || [])));
    answers = batch ? await env.DB.batch(statements) : [await statements[0].all()];
  } catch (error) {
    throw new ApiError(400, 7500, engineMessage(error));
  }
  return answers.map((answer) => {
    const rows = answer.results || [];
    record.rows += rows.length;
    return { results: raw ? toColumnsAndRows(rows) : rows, success: true, meta: answer.meta };
  });
}

// The binding throws Error("D1_ERROR: <engine message>", {cause: Error("<engine message>")})
// (D1_TYPE_ERROR for a value it cannot bind): the REST API's message is the engine's part.
function engineMessage(error) {
  const cause = error && error.cause && error.cause.message;
  return cause || String((error && error.message) || error).replace(/^D1_[A-Z_]+: /, "");
}

function toColumnsAndRows(objects) {
  const columns = objects.length ? Object.keys(objects[0]) : [];
  return { columns, rows: objects.map((row) => columns.map((name) => row[name])) };
}

// -- time travel: the TEST'S STAND-IN, not D1's engine --------------------------------------
// Local D1 keeps no history, so nothing is restored. D1 derives its bookmarks from a point in
// time and they sort as the times do; this keeps those two properties and D1's look (four
// hex groups): the time in milliseconds as 8+8 hex digits, then a digest of it. The same
// timestamp always gives the same bookmark.

async function bookmarkAt(timestamp) {
  const ms = timestamp === null ? Date.now() : Date.parse(timestamp);
  if (!Number.isFinite(ms) || ms < 0) {
    throw new ApiError(400, 7400, `invalid timestamp: ${JSON.stringify(timestamp)} is not an ISO 8601 time`);
  }
  const high = Math.floor(ms / 2 ** 32).toString(16).padStart(8, "0");
  const low = (ms % 2 ** 32).toString(16).padStart(8, "0");
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(String(ms))));
  const tail = Array.from(digest.slice(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
  return `${high}-${low}-00000000-${tail}`;
}

async function restore(bookmark) {
  if (!bookmark || !/^[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{32}$/.test(bookmark)) {
    throw new ApiError(400, 7400, `invalid bookmark: ${JSON.stringify(bookmark)}`);
  }
  stats.restores.push(bookmark);
  return { bookmark, previous_bookmark: await bookmarkAt(null),
           message: "Restored to the bookmark (test stand-in: the data is unchanged)" };
}
