-- wrk script for the bmrgw benchmark: POST one file's bytes with the given
-- headers on every request, and print the results as one JSON line at the end
-- (parsing wrk's human-readable report would break on its unit suffixes).
--
-- Usage: wrk -s post.lua URL -- BODY_FILE "Header: value" ...

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
