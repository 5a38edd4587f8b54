-- HTTP: greets ?name=... in the language of ?lang= (phrases come from lib/phrases.lua).
local phrases = require("phrases")

return function(inputs, context)
  local req = inputs.req
  local name = req.query.name
  if not name or name == "" then
    log.warn("no name given")
    return { status = 400, body = "pass ?name=...\n" }
  end
  local phrase = phrases[req.query.lang or "en"] or phrases.en
  print("greeting " .. name)  -- print and log.* go to the invocation's log
  return {
    status = 200,
    headers = { ["content-type"] = "text/plain" },
    body = string.format("%s, %s!\n", phrase, name),
  }
end
