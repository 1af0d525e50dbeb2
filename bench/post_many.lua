-- wrk script: like post.lua, but the body file holds many bodies separated by
-- NUL bytes, and each request sends the next one. WS-Security signed messages
-- need this: the gateway refuses a signature it has seen before (a replay), so
-- every request must carry a message signed afresh. When the bodies run out
-- they start over, and the replays then show as status errors.
--
-- Usage: wrk -s post_many.lua URL -- BODIES_FILE "Header: value" ...

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post.lua")   -- init (reads the file, sets the headers) and done (the JSON summary)

local bodies, sent = {}, 0
local read_file = init

function init(args)
   read_file(args)
   for body in wrk.body:gmatch("[^%z]+") do
      bodies[#bodies + 1] = body
   end
   wrk.body = nil
end

function request()
   sent = sent % #bodies + 1
   return wrk.format(nil, nil, nil, bodies[sent])
end
