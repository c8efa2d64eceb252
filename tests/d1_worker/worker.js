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
// and Workers KV's REST API answered by KV's own engine, the KV binding (env.KV), under
// /client/v4/accounts/{account}/storage/kv/namespaces/{namespace} (see "Workers KV" below):
//
//   GET    .../keys?prefix=&limit=&cursor=   GET .../values/{key}    GET .../metadata/{key}
//   POST   .../bulk/get                      PUT .../values/{key}    DELETE .../values/{key}
//   PUT    .../bulk                          POST .../bulk/delete    DELETE .../bulk
//   POST   /__kv/wipe                        deletes every key (test hook, no token, not counted)
//
// /__stats (not itself counted, no token): totals of requests, request_bytes (bodies),
// response_bytes, rows (returned), statements (sql strings or batch items); counts by_path
// ("POST /client/v4/..."), by_endpoint ("query", "raw", "time_travel/bookmark", ...) and
// by_status; the bookmarks restored; and a log entry per request with each of those and the SQL
// texts. Of the headers only the User-Agent, so never the token. KV requests count under
// by_endpoint "kv/keys", "kv/bulk/get", "kv/bulk", "kv/bulk/delete", "kv/values", "kv/metadata";
// their log entries carry the key names (`keys`), never a value, and `kv_keys` totals them.
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
  return { requests: 0, request_bytes: 0, response_bytes: 0, rows: 0, statements: 0, kv_keys: 0,
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

    if (url.pathname === "/__kv/wipe" && request.method === "POST") {
      return Response.json({ deleted: await wipeKv(env) });
    }

    const body = new Uint8Array(await request.arrayBuffer());
    const record = { method: request.method, path: url.pathname, endpoint: null, status: 0,
                     request_bytes: body.byteLength, response_bytes: 0, statements: 0, rows: 0, sql: [],
                     keys: [], user_agent: request.headers.get("user-agent") };
    // No connection reuse here: workerd hides the TCP connection and drops the Connection
    // header, so tests/d1_worker_server.py counts connections in a proxy in front of it.
    let status = 200;
    let payload;
    try {
      const answer = KV_ROUTE.test(url.pathname)
        ? await serveKv(request, url, body, env, record)
        : await serve(request, url, body, env, record);
      if (answer instanceof RawAnswer) {  // a value's bytes, as KV's REST API sends them
        record.status = 200;
        record.response_bytes = answer.bytes.byteLength;
        count(record);
        return new Response(answer.bytes, { status: 200, headers: answer.headers });
      }
      payload = answer instanceof ListAnswer
        ? { ...envelope(answer.result), result_info: answer.resultInfo }
        : envelope(answer);
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
  stats.kv_keys += record.keys.length;
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

// -- Workers KV: KV's REST API answered by the KV binding (env.KV) ----------------------------
// The shapes are the REST API's: every answer but a value's bytes is the {success, errors,
// messages, result} envelope above.
//
//   GET  .../keys?prefix=&limit=&cursor=  result [{name, expiration?, metadata?}] in key order,
//        result_info {count, cursor}: cursor "" once the listing is complete. limit: default
//        1000, 10..1000 (outside: HTTP 400). env.KV.list().
//   POST .../bulk/get {"keys": [...] (1..100), "type": "text"|"json", "withMetadata": bool}
//        result {values: {key: value}}, with metadata {values: {key: {value, metadata}}};
//        a missing key is null. No `expiration` here: the binding's bulk read does not give it.
//   PUT  .../bulk [{key, value, expiration?, expiration_ttl?, metadata?, base64?}] (<= 10,000
//        items, <= 100 MB) result {successful_key_count, unsuccessful_keys: []}. Every item is
//        checked before any is written: one refused item refuses the request, nothing written.
//        expiration_ttl wins over expiration when both are given.
//   POST .../bulk/delete ["k1", ...] (<= 10,000), and DELETE .../bulk with the same body (the
//        older form, which wrangler's `kv bulk delete` sends): the same result shape.
//   GET  .../values/{key}     the value's bytes (application/octet-stream, no envelope), and an
//        `expiration` header (seconds since the epoch) for an expiring key.
//   PUT  .../values/{key}?expiration=&expiration_ttl=   the body is the value; or
//        multipart/form-data with fields `value` and `metadata` (JSON). result null.
//   DELETE .../values/{key}   result null (a missing key is no error).
//   GET  .../metadata/{key}   result: the key's metadata, null when it has none.
// Keys are percent-decoded from the path ({key} may hold ':', '/' as %2F, any UTF-8).
//
// Errors (HTTP status, code, message):
// - 404 10009 "get: 'key not found'" (values) / "metadata: 'key not found'" (metadata).
// - 404 10013 "get namespace: 'namespace not found'" for another namespace or account id.
// - 401 10000 "Authentication error", 404 7000, 405 7001: as the D1 routes.
// - 400 7400 "Malformed request body: ..." for a body that is not the JSON the route takes.
// - KV's refusals (a TTL under 60 s, an expiration under 60 s ahead, > 100 keys to bulk/get,
//   a bad key name, a value or metadata too large) keep the binding's own message and status
//   (e.g. 400 "Invalid expiration_ttl of 30. Expiration TTL must be at least 60."), with code
//   KV_REFUSED. The binding throws Error("KV PUT failed: 400 <message>"); the message and
//   status are its, the code number is this harness's own choice. The limits the REST API
//   documents but the binding has no check for (a list limit outside 10..1000, more than
//   10,000 items to write or delete, a body over 100 MB) answer with KV_REFUSED too, in this
//   harness's own words.

const KV_ROUTE = /^\/client\/v4\/accounts\/([^/]+)\/storage\/kv\/namespaces\/([^/]+)(\/.*)?$/;
const KV_REFUSED = 10033;
const KV_MIN_TTL_S = 60;
const KV_LIST_MIN = 10;
const KV_LIST_MAX = 1000;
const KV_BULK_GET_MAX = 100;
const KV_BULK_WRITE_MAX = 10000;
const KV_BULK_WRITE_MAX_BYTES = 100 * 1000 * 1000;
const KV_MAX_KEY_BYTES = 512;
const KV_PARALLEL = 50;  // binding calls in flight at once for the bulk write and delete

// A value's bytes, sent as they are rather than in the JSON envelope.
class RawAnswer {
  constructor(bytes, headers) {
    this.bytes = bytes;
    this.headers = headers;
  }
}

// [endpoint, methods] for the part of the path after the namespace; keyed routes first match.
function kvEndpoint(rest) {
  if (rest === "/keys") return ["kv/keys", ["GET"], null];
  if (rest === "/bulk/get") return ["kv/bulk/get", ["POST"], null];
  if (rest === "/bulk/delete") return ["kv/bulk/delete", ["POST"], null];
  if (rest === "/bulk") return ["kv/bulk", ["PUT", "DELETE"], null];
  const keyed = /^\/(values|metadata)\/(.+)$/.exec(rest);
  if (keyed) return [`kv/${keyed[1]}`, keyed[1] === "values" ? ["GET", "PUT", "DELETE"] : ["GET"], keyed[2]];
  return [null, [], null];
}

async function serveKv(request, url, body, env, record) {
  const [, accountId, namespaceId, rest = ""] = KV_ROUTE.exec(url.pathname);
  const [endpoint, methods, rawKey] = kvEndpoint(rest);
  if (endpoint === null) {
    throw new ApiError(404, 7000, "No route for that URI");
  }
  record.endpoint = endpoint;
  if (!methods.includes(request.method)) {
    throw new ApiError(405, 7001, "Method not allowed");
  }
  const authorization = request.headers.get("authorization");
  if (!env.TOKEN || authorization !== `Bearer ${env.TOKEN}`) {
    throw new ApiError(401, 10000, "Authentication error");
  }
  if (accountId !== env.ACCOUNT_ID || namespaceId !== env.KV_NAMESPACE_ID) {
    throw new ApiError(404, 10013, "get namespace: 'namespace not found'");
  }
  try {
    if (endpoint === "kv/keys") return await kvList(env, url.searchParams, record);
    if (endpoint === "kv/bulk/get") return await kvBulkGet(env, body, record);
    if (endpoint === "kv/bulk") {
      return request.method === "PUT" ? await kvBulkWrite(env, body, record) : await kvBulkDelete(env, body, record);
    }
    if (endpoint === "kv/bulk/delete") return await kvBulkDelete(env, body, record);
    const key = decodeKey(rawKey);
    record.keys = [key];
    if (endpoint === "kv/metadata") return await kvMetadata(env, key);
    if (request.method === "GET") return await kvGetValue(env, key);
    if (request.method === "PUT") return await kvPutValue(env, key, request, url.searchParams, body);
    await env.KV.delete(key);
    return null;
  } catch (error) {
    throw kvError(error);
  }
}

// The binding's refusal, Error("KV <OP> failed: <status> <message>"), as the API's error.
function kvError(error) {
  if (error instanceof ApiError) return error;
  const refused = /^KV [A-Z_ ]+ failed: (\d{3}) ([\s\S]*)$/.exec(String((error && error.message) || ""));
  if (refused) return new ApiError(Number(refused[1]), KV_REFUSED, refused[2]);
  return error;
}

function decodeKey(raw) {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new ApiError(400, 7400, "Could not URL-decode key name");
  }
}

function parseJson(bytes, what) {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new ApiError(400, 7400, `Malformed request body: not JSON (expected ${what})`);
  }
}

async function kvList(env, params, record) {
  const rawLimit = params.get("limit");
  let limit = KV_LIST_MAX;
  if (rawLimit !== null && rawLimit !== "") {
    limit = /^\d+$/.test(rawLimit) ? Number(rawLimit) : NaN;
    if (!(limit >= KV_LIST_MIN && limit <= KV_LIST_MAX)) {
      throw new ApiError(400, KV_REFUSED,
        `Invalid limit of ${rawLimit}. Please specify an integer from ${KV_LIST_MIN} to ${KV_LIST_MAX}.`);
    }
  }
  const listed = await env.KV.list({ prefix: params.get("prefix") || undefined, limit,
                                     cursor: params.get("cursor") || undefined });
  const keys = listed.keys.map(({ name, expiration, metadata }) => ({
    name,
    ...(expiration === undefined ? {} : { expiration }),
    ...(metadata === undefined ? {} : { metadata }),
  }));
  record.keys = keys.map((k) => k.name);
  return new ListAnswer(keys, { count: keys.length, cursor: listed.list_complete ? "" : listed.cursor });
}

// A result with result_info beside it (the list's cursor).
class ListAnswer {
  constructor(result, resultInfo) {
    this.result = result;
    this.resultInfo = resultInfo;
  }
}

async function kvBulkGet(env, body, record) {
  const request = parseJson(body, '{"keys": [...], "type", "withMetadata"}');
  const malformed = () => new ApiError(400, 7400,
    'Malformed request body: expected {"keys": [strings], "type": "text"|"json", "withMetadata": bool}');
  if (request === null || typeof request !== "object" || !Array.isArray(request.keys)) throw malformed();
  const { keys, type = "text", withMetadata = false } = request;
  if (!keys.every((k) => typeof k === "string") || typeof withMetadata !== "boolean") throw malformed();
  if (type !== "text" && type !== "json") {
    throw new ApiError(400, KV_REFUSED, `"${type}" is not a valid type. Use "json" or "text"`);
  }
  record.keys = keys;
  if (keys.length > KV_BULK_GET_MAX) {
    throw new ApiError(400, KV_REFUSED, `You can request a maximum of ${KV_BULK_GET_MAX} keys`);
  }
  if (keys.length === 0) {
    throw new ApiError(400, KV_REFUSED, "You must request a minimum of 1 key");
  }
  const found = withMetadata ? await env.KV.getWithMetadata(keys, { type }) : await env.KV.get(keys, { type });
  const values = {};
  for (const key of keys) {
    let entry = found.get(key);
    entry = entry === undefined ? null : entry;
    if (withMetadata && entry !== null && typeof entry !== "object") {
      // The binding's bulk read leaves a falsy value ("", 0, false) unwrapped, without its
      // metadata; the single read gives both.
      const single = await env.KV.getWithMetadata(key, { type });
      entry = { value: single.value, metadata: single.metadata };
    } else if (withMetadata && entry !== null) {
      entry = { value: entry.value, metadata: entry.metadata === undefined ? null : entry.metadata };
    }
    values[key] = entry;
  }
  return { values };
}

function keyRefusal(key) {
  if (key === "") return new ApiError(400, KV_REFUSED, "Key names must not be empty");
  if (key === "." || key === "..") {
    return new ApiError(400, KV_REFUSED, `Illegal key name "${key}". Please use a different name.`);
  }
  const length = new TextEncoder().encode(key).byteLength;
  if (length > KV_MAX_KEY_BYTES) {
    return new ApiError(414, KV_REFUSED,
      `UTF-8 encoded length of ${length} exceeds key length limit of ${KV_MAX_KEY_BYTES}.`);
  }
  return null;
}

// The binding's put options for expiration_ttl / expiration (the TTL wins). The bulk write
// checks them here, with the binding's own messages, so that nothing is written when one item
// is refused (the binding checks the same, but only as it writes that item); a single write
// (`early` false) leaves the minimums to the binding.
function expiryOptions(ttl, expiration, nowS, early = true) {
  if (ttl !== undefined && ttl !== null && ttl !== "") {
    const seconds = Number(ttl);
    if (!Number.isInteger(seconds) || seconds <= 0) {
      throw new ApiError(400, KV_REFUSED, `Invalid expiration_ttl of ${ttl}. Please specify integer greater than 0.`);
    }
    if (early && seconds < KV_MIN_TTL_S) {
      throw new ApiError(400, KV_REFUSED,
        `Invalid expiration_ttl of ${ttl}. Expiration TTL must be at least ${KV_MIN_TTL_S}.`);
    }
    return { expirationTtl: seconds };
  }
  if (expiration !== undefined && expiration !== null && expiration !== "") {
    const at = Number(expiration);
    if (!Number.isInteger(at) || (early && at <= nowS)) {
      throw new ApiError(400, KV_REFUSED, `Invalid expiration of ${expiration}. Please specify integer greater `
        + "than the current number of seconds since the UNIX epoch.");
    }
    if (early && at < nowS + KV_MIN_TTL_S) {
      throw new ApiError(400, KV_REFUSED, `Invalid expiration of ${expiration}. `
        + `Expiration times must be at least ${KV_MIN_TTL_S} seconds in the future.`);
    }
    return { expiration: at };
  }
  return {};
}

async function inBatches(items, work) {
  for (let i = 0; i < items.length; i += KV_PARALLEL) {
    await Promise.all(items.slice(i, i + KV_PARALLEL).map(work));
  }
}

async function kvBulkWrite(env, body, record) {
  if (body.byteLength > KV_BULK_WRITE_MAX_BYTES) {
    throw new ApiError(413, KV_REFUSED, `Request body of ${body.byteLength} bytes exceeds the limit of 100 MB`);
  }
  const items = parseJson(body, "[{key, value, ...}]");
  const malformed = (i) => new ApiError(400, 7400, `Malformed request body: item ${i} is not `
    + "{key: string, value: string, expiration?: number, expiration_ttl?: number, metadata?, base64?: bool}");
  if (!Array.isArray(items)) {
    throw new ApiError(400, 7400, "Malformed request body: expected an array of {key, value, ...}");
  }
  if (items.length > KV_BULK_WRITE_MAX) {
    throw new ApiError(400, KV_REFUSED, `You can write a maximum of ${KV_BULK_WRITE_MAX} keys at once`);
  }
  const nowS = Math.floor(Date.now() / 1000);
  const writes = items.map((item, i) => {
    if (item === null || typeof item !== "object" || typeof item.key !== "string" || typeof item.value !== "string"
        || (item.base64 !== undefined && typeof item.base64 !== "boolean")) {
      throw malformed(i);
    }
    for (const field of ["expiration", "expiration_ttl"]) {
      if (item[field] !== undefined && item[field] !== null && typeof item[field] !== "number") throw malformed(i);
    }
    const refusal = keyRefusal(item.key);
    if (refusal) throw refusal;
    const options = expiryOptions(item.expiration_ttl, item.expiration, nowS);
    if (item.metadata !== undefined && item.metadata !== null) options.metadata = item.metadata;
    let value = item.value;
    if (item.base64) {
      try {
        value = Uint8Array.from(atob(item.value), (c) => c.charCodeAt(0));
      } catch {
        throw new ApiError(400, 7400, `Malformed request body: item ${i}'s value is not base64`);
      }
    }
    return { key: item.key, value, options };
  });
  record.keys = writes.map((w) => w.key);
  await inBatches(writes, ({ key, value, options }) => env.KV.put(key, value, options));
  return { successful_key_count: writes.length, unsuccessful_keys: [] };
}

async function kvBulkDelete(env, body, record) {
  const keys = parseJson(body, '["key", ...]');
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === "string")) {
    throw new ApiError(400, 7400, "Malformed request body: expected an array of key names");
  }
  if (keys.length > KV_BULK_WRITE_MAX) {
    throw new ApiError(400, KV_REFUSED, `You can delete a maximum of ${KV_BULK_WRITE_MAX} keys at once`);
  }
  record.keys = keys;
  await inBatches(keys, (key) => env.KV.delete(key));
  return { successful_key_count: keys.length, unsuccessful_keys: [] };
}

async function kvGetValue(env, key) {
  const value = await env.KV.get(key, "arrayBuffer");
  if (value === null) {
    throw new ApiError(404, 10009, "get: 'key not found'");
  }
  const headers = { "content-type": "application/octet-stream" };
  // The binding's read gives no expiration; the listing does, and a key lists first under
  // its own name as prefix.
  const [listed] = (await env.KV.list({ prefix: key, limit: 1 })).keys;
  if (listed && listed.name === key && listed.expiration !== undefined) {
    headers.expiration = String(listed.expiration);
  }
  return new RawAnswer(new Uint8Array(value), headers);
}

async function kvPutValue(env, key, request, params, body) {
  const refusal = keyRefusal(key);
  if (refusal) throw refusal;
  const options = expiryOptions(params.get("expiration_ttl"), params.get("expiration"), 0, false);
  let value = body;
  const contentType = request.headers.get("content-type") || "";
  if (contentType.toLowerCase().startsWith("multipart/form-data")) {
    let form;
    try {
      form = await new Response(body, { headers: { "content-type": contentType } }).formData();
    } catch {
      throw new ApiError(400, 7400, "Malformed request body: not multipart/form-data");
    }
    const field = form.get("value");
    if (field === null) throw new ApiError(400, 7400, "Malformed request body: no `value` field");
    value = typeof field === "string" ? field : new Uint8Array(await field.arrayBuffer());
    const metadata = form.get("metadata");
    if (metadata !== null) {
      try {
        options.metadata = JSON.parse(typeof metadata === "string" ? metadata : await metadata.text());
      } catch {
        throw new ApiError(400, 7400, "Malformed request body: `metadata` is not JSON");
      }
    }
  }
  await env.KV.put(key, value, options);
  return null;
}

async function kvMetadata(env, key) {
  const { value, metadata } = await env.KV.getWithMetadata(key, "stream");
  if (value === null) {
    throw new ApiError(404, 10009, "metadata: 'key not found'");
  }
  await value.cancel();
  return metadata === undefined ? null : metadata;
}

async function wipeKv(env) {
  let deleted = 0;
  for (;;) {  // from the start each time: what was deleted no longer lists
    const { keys } = await env.KV.list();
    if (keys.length === 0) return deleted;
    await inBatches(keys, ({ name }) => env.KV.delete(name));
    deleted += keys.length;
  }
}
