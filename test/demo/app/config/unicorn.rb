# As Heroku's Unicorn guide writes it: the worker count from WEB_CONCURRENCY, the app
# loaded once in the master and forked into the workers.
worker_processes Integer(ENV["WEB_CONCURRENCY"] || 2)
timeout 15
preload_app true
listen ENV.fetch("PORT", "5000")
