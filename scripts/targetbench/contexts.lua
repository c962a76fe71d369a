-- wrk script: GET /events for 10,000 player contexts in turn, each a player of its own,
-- on one of five platforms, languages and countries, and two client versions (the same
-- contexts as BenchmarkGetEventsTargeted).
local platforms = {"ios", "android", "windows", "web", "switch"}
local langs = {"en", "fr", "de", "ja", "pt-BR"}
local countries = {"US", "FR", "DE", "JP", "BR"}
local paths = {}
for i = 0, 9999 do
  paths[i + 1] = string.format("/events?player_id=p%d&platform=%s&language=%s&country=%s&client_version=%d.1.0",
    i, platforms[i % 5 + 1], langs[math.floor(i / 5) % 5 + 1], countries[math.floor(i / 25) % 5 + 1],
    1 + math.floor(i / 125) % 2)
end
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, paths[n % #paths + 1])
end
