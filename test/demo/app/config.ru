# The demo's app: a small Rack app with the commonest leak there is, a cache that is never
# emptied. Every page it renders is kept, so each Unicorn worker grows with every request
# it serves, as a long-running worker's memory creeps up over days. Rack only (Debian's
# ruby-rack), served by Unicorn with config/unicorn.rb:
#
#   PORT=5000 unicorn -c config/unicorn.rb
#
#   GET /     renders a page of PAGE_KB KiB (default 256), keeps it for good, and answers
#             how much this worker holds
#   GET /up   200 "ok", for health checks
PAGE_KB = Integer(ENV["PAGE_KB"] || 256)

# The leak: rendered pages by request number, never evicted. Loaded in the master before
# the fork (preload_app true), so each worker starts with its own empty copy and fills it.
CACHE = {}

def render(number)
  row = "<tr><td>#{number}</td><td>#{"x" * 100}</td></tr>\n"
  row * (PAGE_KB * 1024 / row.bytesize + 1)
end

def reply(body, status = 200)
  [status, { "content-type" => "text/plain; charset=utf-8", "content-length" => body.bytesize.to_s }, [body]]
end

run lambda { |env|
  case env["PATH_INFO"]
  when "/up"
    reply("ok\n")
  when "/"
    number = CACHE.size + 1
    CACHE[number] = render(number)
    reply("page #{number} rendered; pid #{Process.pid} holds #{CACHE.size * PAGE_KB / 1024} MB of pages\n")
  else
    reply("not found\n", 404)
  end
}
