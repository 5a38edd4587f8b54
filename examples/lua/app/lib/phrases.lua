-- A shared module: `require("phrases")` loads app/lib/phrases.lua (Lua source only).
return { en = "Hello", fr = "Bonjour", de = "Hallo", es = "Hola" }
