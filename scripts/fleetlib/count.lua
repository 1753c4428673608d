-- wrk script for scripts/fleet: count responses that are not 2xx across all threads and print
-- one summary line with wrk's socket errors.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format("FLEET requests=%d non2xx=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, bad, e.connect, e.read, e.write, e.status, e.timeout))
end
