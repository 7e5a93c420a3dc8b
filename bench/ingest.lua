-- Sends pre-signed unique webhooks: each wrk thread takes every Nth line of the bodies file
-- ("<signature>\t<body>"), so no request_id is sent twice.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  requests = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == id then
      local tab = line:find("\t", 1, true)
      local sig, body = line:sub(1, tab - 1), line:sub(tab + 1)
      requests[#requests + 1] = wrk.format("POST", "/webhook", {
        ["Content-Type"] = "application/json",
        ["Helicone-Signature"] = sig,
      }, body)
    end
    i = i + 1
  end
  n = 0
end

function request()
  n = n + 1
  if n > #requests then n = 1 end
  return requests[n]
end
