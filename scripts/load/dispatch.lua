-- wrk script for scripts/load-test.sh: every request is a POST /tasks with
-- a valid dispatch body (a random issue number, a simulated run of 0 to
-- MAX_MS milliseconds). Each thread writes the id of every 201 it received
-- to IDS_DIR/ids-<thread>.txt, so the rows can be checked against the
-- answers afterwards; done() prints the counts by status.
--
-- wrk ... -s scripts/load/dispatch.lua URL -- IDS_DIR MAX_MS [TOKEN]

local threads = {}
local thread_count = 0

function setup(thread)
    thread_count = thread_count + 1
    thread:set("number", thread_count)
    table.insert(threads, thread)
end

function init(args)
    ids_dir = args[1] or "/tmp"
    max_ms = tonumber(args[2] or "2000")
    token = args[3]
    ids = assert(io.open(ids_dir .. "/ids-" .. number .. ".txt", "w"))
    created = 0
    busy = 0
    other = 0
    math.randomseed(number * 7919)
end

function request()
    local body = string.format(
        '{"repo":"acme/widgets","issue_number":%d,"user":"load","agent":"fixer",'
            .. '"agent_type":"claude_sdk","model":"claude-opus","provider":"anthropic",'
            .. '"duration_ms":%d}',
        math.random(1, 100000),
        math.random(0, max_ms)
    )
    local headers = { ["Content-Type"] = "application/json" }
    if token then
        headers["Authorization"] = "Bearer " .. token
    end
    return wrk.format("POST", "/tasks", headers, body)
end

function response(status, headers, body)
    if status == 201 then
        created = created + 1
        ids:write(body:match('"id":"([^"]+)"'), "\n")
        ids:flush()
    elseif status == 503 then
        busy = busy + 1
    else
        other = other + 1
    end
end

function done(summary, latency, requests)
    local total_created, total_busy, total_other = 0, 0, 0
    for _, thread in ipairs(threads) do
        total_created = total_created + thread:get("created")
        total_busy = total_busy + thread:get("busy")
        total_other = total_other + thread:get("other")
    end
    local errors = summary.errors
    io.write(string.format(
        "summary: requests=%d created=%d busy_503=%d other_status=%d "
            .. "socket_errors=%d (connect %d, read %d, write %d, timeout %d) "
            .. "seconds=%.2f throughput=%.0f/s p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
        summary.requests, total_created, total_busy, total_other,
        errors.connect + errors.read + errors.write + errors.timeout,
        errors.connect, errors.read, errors.write, errors.timeout,
        summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000
    ))
end
