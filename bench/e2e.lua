-- Sends each pre-built request exactly once: wrk thread k of n takes lines k, k+n, k+2n... of
-- the file ("<path>\t<signature>\t<body>"). A thread that has sent all its own sends a cheap
-- GET (answered 405 by every system measured) while its last answers come in, and stops once
-- every one of its own is answered; the caller stops wrk (SIGINT) when the run is over.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path, nthreads, key, idle = args[1], tonumber(args[2]), args[3], args[4]
  requests = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == id then
      local a = line:find("\t", 1, true)
      local b = line:find("\t", a + 1, true)
      requests[#requests + 1] = wrk.format("POST", line:sub(1, a - 1), {
        ["Content-Type"] = "application/json",
        ["Helicone-Signature"] = line:sub(a + 1, b - 1),
        ["Authorization"] = "Bearer " .. key,
      }, line:sub(b + 1))
    end
    i = i + 1
  end
  idle_request = wrk.format("GET", idle)
  sent, answered, failed = 0, 0, 0
  first = true
end

function request()
  -- wrk calls the first thread's request() once before the run, to check what it returns, and
  -- never sends that one: every thread's first is the idle request.
  if first then
    first = false
    return idle_request
  end
  if sent < #requests then
    sent = sent + 1
    return requests[sent]
  end
  return idle_request
end

function response(status, headers, body)
  if status == 405 then return end
  answered = answered + 1
  if status >= 300 then failed = failed + 1 end
  if answered >= #requests then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local a, f = 0, 0
  for _, thread in ipairs(threads) do
    a = a + thread:get("answered")
    f = f + thread:get("failed")
  end
  io.write(string.format("answered %d failed %d\n", a, f))
end
