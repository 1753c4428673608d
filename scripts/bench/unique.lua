-- wrk: hello with a new query string on every request (/?q=1, /?q=2, ...): an uncached workload
-- whose every URL is new, like search pages or API calls with ids (scripts/bench/cache_bench.py)
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/?q=" .. n)
end
