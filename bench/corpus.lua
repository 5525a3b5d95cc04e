-- wrk script: cycle through the corpus written by bench/corpus.py and count responses by status.
--   wrk -t1 -c64 -d20s -s bench/corpus.lua http://127.0.0.1:8080 -- CORPUS DURATION_S [TAIL_S]
-- For the last TAIL_S seconds every connection sends a CORS preflight (OPTIONS, stored by nobody)
-- instead of a beacon: wrk drops whatever is in flight when it stops, so this way every beacon it
-- sent got its answer counted, and "rows in ClickHouse == 200s counted" can be checked exactly.
-- done() prints one line `BENCH_JSON {...}` for bench/bench.py.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

-- per-thread state; globals so that done() can read them with thread:get()
counts = {}
sent_valid, sent_invalid, sent_drain = 0, 0, 0
local reqs, valid, n, i = {}, {}, 0, 0
local drain_at, drain_req

function init(args)
  local path, duration, tail = args[1], tonumber(args[2] or "0"), tonumber(args[3] or "1")
  for line in io.lines(path) do
    local v, method, target, ctype, ua, body =
      line:match("^(%d)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    if v then
      local headers = { ["User-Agent"] = ua }
      if ctype ~= "" then headers["Content-Type"] = ctype end
      n = n + 1
      reqs[n] = wrk.format(method, target, headers, body ~= "" and body or nil)
      valid[n] = (v == "1")
    end
  end
  -- threads start at different places so they do not send the same beacons in lockstep
  i = ((thread_index or 0) * 7919) % n
  drain_req = wrk.format("OPTIONS", "/collect", {
    ["Origin"] = "https://player.example", ["Access-Control-Request-Method"] = "POST",
  })
  if duration > 0 then drain_at = now() + duration - tail end
end

-- wrk calls request() once after init() to verify the script; that request is never sent
local verified = false

function request()
  if not verified then
    verified = true
    return reqs[1]
  end
  if drain_at and now() >= drain_at then
    sent_drain = sent_drain + 1
    return drain_req
  end
  i = i + 1
  if i > n then i = 1 end
  if valid[i] then sent_valid = sent_valid + 1 else sent_invalid = sent_invalid + 1 end
  return reqs[i]
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local status, sv, si, sd = {}, 0, 0, 0
  for _, thread in ipairs(threads) do
    for code, k in pairs(thread:get("counts")) do status[code] = (status[code] or 0) + k end
    sv = sv + thread:get("sent_valid")
    si = si + thread:get("sent_invalid")
    sd = sd + thread:get("sent_drain")
  end
  local parts = {}
  for code, k in pairs(status) do table.insert(parts, string.format('"%d":%d', code, k)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},' ..
    '"status":{%s},"sent_valid":%d,"sent_invalid":%d,"sent_drain":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, table.concat(parts, ","), sv, si, sd))
end
