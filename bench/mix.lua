-- wrk script for the soak: like post.lua, but each request goes to the next
-- endpoint of a fixed rotation (/soap/fast, /soap/slow, /soap/pair, /soap/limited),
-- the destination being the path.
--
-- Usage: wrk -s mix.lua http://HOST:PORT/soap/fast -- BODY_FILE "Header: value" ...

local paths = {"/soap/fast", "/soap/slow", "/soap/pair", "/soap/limited"}
local next_path = 0

function init(args)
   local f = assert(io.open(args[1], "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.method = "POST"
   for i = 2, #args do
      local name, value = args[i]:match("^([^:]+):%s*(.*)$")
      wrk.headers[name] = value
   end
end

function request()
   next_path = next_path % #paths + 1
   return wrk.format(nil, paths[next_path])
end

function done(summary, latency, requests)
   local e = summary.errors
   local p = {}
   for _, q in ipairs({50, 90, 99, 99.9}) do
      table.insert(p, string.format('"%s":%.1f', tostring(q), latency:percentile(q)))
   end
   io.write(string.format(
      'BENCH-RESULT {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
      '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
      '"latency_us":{"min":%.1f,"mean":%.1f,"max":%.1f,"stdev":%.1f,%s}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max, latency.stdev, table.concat(p, ",")))
end
