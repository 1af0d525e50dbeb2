-- wrk script: POST one file's bytes like post.lua, and compare every answer
-- with the expected bytes; a 200 whose body differs counts as a "bad" error.
-- (Lua string equality compares the whole body: the answer's checksum is its
-- every byte.)
--
-- Usage: wrk -s check.lua URL -- BODY_FILE EXPECTED_FILE "Header: value" ...

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(args[1], "rb"))
   wrk.body = f:read("*a")
   f:close()
   local g = assert(io.open(args[2], "rb"))
   expected = g:read("*a")
   g:close()
   wrk.method = "POST"
   for i = 3, #args do
      local name, value = args[i]:match("^([^:]+):%s*(.*)$")
      wrk.headers[name] = value
   end
   bad = 0
   good = 0
end

function response(status, headers, body)
   if status == 200 and body == expected then
      good = good + 1
   else
      bad = bad + 1
   end
end

function done(summary, latency, requests)
   local bad, good = 0, 0
   for _, thread in ipairs(threads) do
      bad = bad + thread:get("bad")
      good = good + thread:get("good")
   end
   local e = summary.errors
   local p = {}
   for _, q in ipairs({50, 90, 99, 99.9}) do
      table.insert(p, string.format('"%s":%.1f', tostring(q), latency:percentile(q)))
   end
   io.write(string.format(
      'BENCH-RESULT {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,"checked":%.0f,' ..
      '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,"bad":%.0f},' ..
      '"latency_us":{"min":%.1f,"mean":%.1f,"max":%.1f,"stdev":%.1f,%s}}\n',
      summary.duration, summary.requests, summary.bytes, good,
      e.connect, e.read, e.write, e.status, e.timeout, bad,
      latency.min, latency.mean, latency.max, latency.stdev, table.concat(p, ",")))
end
